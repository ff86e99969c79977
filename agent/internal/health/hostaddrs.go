package health

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
)

// HostAddrs lists this host's own IP addresses, for Validate. It reads
// /proc/net/fib_trie (IPv4) and /proc/net/if_inet6 (IPv6) rather than asking the
// kernel over netlink as net.InterfaceAddrs does: the agent's NixOS unit allows only
// AF_UNIX, AF_INET and AF_INET6 sockets, so netlink is refused there, while /proc/net
// (the agent's own network namespace) stays readable.
func HostAddrs() ([]netip.Addr, error) {
	return hostAddrsFrom("/proc/net/fib_trie", "/proc/net/if_inet6")
}

func hostAddrsFrom(fibTrie, ifInet6 string) ([]netip.Addr, error) {
	v4, err := os.ReadFile(fibTrie)
	if err != nil {
		return nil, fmt.Errorf("host addresses: %w", err)
	}
	addrs := parseFibTrie(v4)
	// No IPv6 (disabled, or no kernel support) is no error: there are no addresses.
	if v6, err := os.ReadFile(ifInet6); err == nil {
		addrs = append(addrs, parseIfInet6(v6)...)
	} else if !os.IsNotExist(err) {
		return nil, fmt.Errorf("host addresses: %w", err)
	}
	slices.SortFunc(addrs, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(addrs), nil
}

// parseFibTrie takes the local addresses from /proc/net/fib_trie: a leaf line
// "|-- <ip>" followed, among its entries, by "/32 host LOCAL".
func parseFibTrie(data []byte) []netip.Addr {
	var addrs []netip.Addr
	var leaf netip.Addr
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "|--":
			leaf, _ = netip.ParseAddr(f[1])
		case len(f) >= 3 && f[0] == "/32" && f[1] == "host" && f[2] == "LOCAL" && leaf.IsValid():
			addrs = append(addrs, leaf)
		}
	}
	return addrs
}

// parseIfInet6 reads /proc/net/if_inet6: 32 hex digits of address first on each line.
func parseIfInet6(data []byte) []netip.Addr {
	var addrs []netip.Addr
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || len(f[0]) != 32 {
			continue
		}
		b, err := hex.DecodeString(f[0])
		if err != nil {
			continue
		}
		addrs = append(addrs, netip.AddrFrom16([16]byte(b)))
	}
	return addrs
}
