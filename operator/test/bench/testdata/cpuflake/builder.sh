# Builder of the benchmark fixture: fixed CPU work, then a system with a real
# bin/switch-to-configuration. Runs without a sandbox, with the base system's tools.
PATH=/usr/bin:/bin
set -eu
echo "nio-bench: hashing $workMiB MiB"
sum=$(head -c "${workMiB}M" /dev/zero | sha256sum)
mkdir -p "$out/bin"
echo "$sum" >"$out/work-sum"
sed -e "s|@out@|$out|g" "$switchScript" >"$out/bin/switch-to-configuration"
chmod 0555 "$out/bin/switch-to-configuration"
echo "nio-bench: done"
