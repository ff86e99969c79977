# The build sleeps for the seconds in ./sleep.txt before producing a system, to test
# attaching to and stopping a running build. Vary ./version.txt for a fresh build.
{
  description = "nio test fixture: slow build";
  outputs = { self }:
    let
      read = f: default:
        if builtins.pathExists f
        then builtins.replaceStrings [ "\n" ] [ "" ] (builtins.readFile f)
        else default;
      slow = builtins.derivation {
        system = read ./system.txt "x86_64-linux";
        name = "nio-fixture-sleep-${read ./version.txt "1"}";
        builder = "/bin/sh";
        seconds = read ./sleep.txt "5";
        args = [ "-c" "echo \"nio-fixture: sleeping $seconds s\"; /bin/sleep \"$seconds\"; echo \"nio-fixture: awake\"; echo $seconds > $out" ];
      };
      system = import ./system.nix {
        system = read ./system.txt "x86_64-linux";
        name = "sleepy";
        version = read ./version.txt "1";
        extraInputs = { inherit slow; };
      };
    in
    {
      nixosConfigurations.worker.config.system.build.toplevel = system;
    };
}
