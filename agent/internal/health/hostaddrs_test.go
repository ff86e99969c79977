package health

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestHostAddrsReadsLocalAddressesNotRoutesOrBroadcasts(t *testing.T) {
	got, err := hostAddrsFrom("testdata/fib_trie", "testdata/if_inet6")
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{
		netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.0.2.2"),
		netip.MustParseAddr("::1"), netip.MustParseAddr("2001:db8::10"), netip.MustParseAddr("fe80::fc:ff:fe00:1"),
	}
	slices.SortFunc(want, func(a, b netip.Addr) int { return a.Compare(b) })
	if !slices.Equal(got, want) {
		t.Fatalf("addresses = %v, want %v", got, want)
	}
}

func TestHostAddrsWithoutIPv6(t *testing.T) {
	got, err := hostAddrsFrom("testdata/fib_trie", filepath.Join(t.TempDir(), "if_inet6"))
	if err != nil || len(got) != 2 {
		t.Fatalf("addresses = %v, %v", got, err)
	}
	if _, err := hostAddrsFrom(filepath.Join(t.TempDir(), "fib_trie"), "testdata/if_inet6"); err == nil {
		t.Fatal("no error without /proc/net/fib_trie")
	}
}

// The live /proc/net must agree with what netlink says (here, outside a sandbox).
func TestHostAddrsAgreesWithInterfaceAddrs(t *testing.T) {
	got, err := HostAddrs()
	if err != nil {
		t.Fatal(err)
	}
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("no netlink here:", err) // CI machines have it: never skip there
		}
		t.Skip("no netlink here:", err)
	}
	for _, a := range ifaddrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, _ := netip.AddrFromSlice(ipn.IP)
		if ip = ip.Unmap(); !slices.Contains(got, ip) {
			t.Errorf("HostAddrs() = %v lacks %s", got, ip)
		}
	}
}
