package health

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func httpSpec(url string, allowRemote bool) Spec {
	return Spec{Timeout: time.Minute, Checks: []Check{{Name: "web", HTTP: &HTTPCheck{URL: url, AllowRemote: allowRemote}}}}
}

func cmdCheck(name string, timeout time.Duration, argv ...string) Check {
	return Check{Name: name, Command: &CommandCheck{Argv: argv, Timeout: timeout}}
}

func TestValidate(t *testing.T) {
	host := []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")}
	many := Spec{Timeout: time.Minute}
	for i := range MaxChecks + 1 {
		many.Checks = append(many.Checks, cmdCheck("c"+string(rune('a'+i%26))+string(rune('a'+i/26)), time.Second, "/bin/true"))
	}
	unitsOnly := func(u UnitsCheck) Spec {
		return Spec{Timeout: time.Minute, Checks: []Check{{Name: "units", Units: &u}}}
	}
	cases := []struct {
		name string
		spec Spec
		// want is "" for a valid spec, else fragments every one of which the error
		// must contain.
		want []string
	}{
		{"no checks", Spec{}, nil},
		{"loopback v4", httpSpec("http://127.0.0.1:8080/health", false), nil},
		{"loopback v4 other than .1", httpSpec("http://127.3.4.5/", false), nil},
		{"loopback v6", httpSpec("http://[::1]:8080/health", false), nil},
		{"v4-mapped loopback", httpSpec("http://[::ffff:127.0.0.1]/", false), nil},
		{"localhost", httpSpec("https://localhost/health", false), nil},
		{"LOCALHOST.", httpSpec("http://LOCALHOST./", false), nil},
		{"host address v4", httpSpec("http://192.0.2.10:9000/", false), nil},
		{"host address v6", httpSpec("http://[2001:db8::10]/", false), nil},
		{"remote address refused", httpSpec("http://192.0.2.99/", false), []string{`"web"`, "192.0.2.99", "allowRemote"}},
		{"unspecified address refused", httpSpec("http://0.0.0.0:8080/", false), []string{"0.0.0.0", "allowRemote"}},
		{"dns name refused", httpSpec("http://example.com/", false), []string{`"web"`, "example.com", "allowRemote"}},
		{"localhost subdomain refused", httpSpec("http://a.localhost/", false), []string{"a.localhost"}},
		{"remote allowed", httpSpec("https://example.com/health", true), nil},
		{"remote address allowed", httpSpec("http://192.0.2.99/", true), nil},
		{"bad scheme", httpSpec("ftp://127.0.0.1/", false), []string{`"web"`, "scheme"}},
		{"bad scheme even when remote allowed", httpSpec("file:///etc/passwd", true), []string{"scheme"}},
		{"no host", httpSpec("http:///path", false), []string{"no host"}},
		{"credentials", httpSpec("http://user:secret@127.0.0.1/", false), []string{"credentials"}},
		{"bad port", httpSpec("http://127.0.0.1:99999/", false), []string{"port"}},
		{"bad status", Spec{Timeout: time.Minute, Checks: []Check{{Name: "web", HTTP: &HTTPCheck{URL: "http://localhost/", ExpectStatus: 42}}}}, []string{"42"}},
		{"duplicate names", Spec{Timeout: time.Minute, Checks: []Check{cmdCheck("a", time.Second, "/bin/true"), cmdCheck("a", time.Second, "/bin/true")}}, []string{`"a"`, "another check"}},
		{"empty name", Spec{Timeout: time.Minute, Checks: []Check{cmdCheck("", time.Second, "/bin/true")}}, []string{"#1", "name is required"}},
		{"bad name", Spec{Timeout: time.Minute, Checks: []Check{cmdCheck("has space", time.Second, "/bin/true")}}, []string{`"has space"`, "letters"}},
		{"zero kinds", Spec{Timeout: time.Minute, Checks: []Check{{Name: "none"}}}, []string{`"none"`, "exactly one", "not 0"}},
		{"two kinds", Spec{Timeout: time.Minute, Checks: []Check{{Name: "two", HTTP: &HTTPCheck{URL: "http://localhost/"}, Command: &CommandCheck{Argv: []string{"/bin/true"}, Timeout: time.Second}}}}, []string{`"two"`, "exactly one", "not 2"}},
		{"relative argv", Spec{Timeout: time.Minute, Checks: []Check{cmdCheck("rel", time.Second, "curl", "-f", "http://localhost")}}, []string{`"rel"`, "absolute"}},
		{"empty argv", Spec{Timeout: time.Minute, Checks: []Check{cmdCheck("none", time.Second)}}, []string{`"none"`, "command is required"}},
		{"command timeout zero", Spec{Timeout: time.Minute, Checks: []Check{cmdCheck("c", 0, "/bin/true")}}, []string{`"c"`, "positive"}},
		{"command timeout above overall", Spec{Timeout: time.Minute, Checks: []Check{cmdCheck("c", 2*time.Minute, "/bin/true")}}, []string{`"c"`, "longer than the overall"}},
		{"overall timeout zero", Spec{Checks: []Check{cmdCheck("c", time.Second, "/bin/true")}}, []string{"overall timeout must be positive"}},
		{"overall timeout above an hour", Spec{Timeout: 2 * time.Hour, Checks: []Check{cmdCheck("c", time.Second, "/bin/true")}}, []string{"maximum 1h0m0s"}},
		{"interval too short", Spec{Timeout: time.Minute, Interval: time.Millisecond, Checks: []Check{cmdCheck("c", time.Second, "/bin/true")}}, []string{"interval", "minimum"}},
		{"interval above timeout", Spec{Timeout: time.Second, Interval: time.Minute, Checks: []Check{cmdCheck("c", time.Second, "/bin/true")}}, []string{"interval", "longer"}},
		{"too many checks", many, []string{"33 checks", "at most 32"}},
		{"units valid", unitsOnly(UnitsCheck{Units: []string{"nginx.service", "sshd"}, NoNewFailures: true}), nil},
		{"units only no-new-failures", unitsOnly(UnitsCheck{NoNewFailures: true}), nil},
		{"units vacuous", unitsOnly(UnitsCheck{}), []string{`"units"`, "needs units"}},
		{"unit looks like an option", unitsOnly(UnitsCheck{Units: []string{"--all"}}), []string{"--all", "'-'"}},
		{"unit pattern", unitsOnly(UnitsCheck{Units: []string{"nginx*"}}), []string{"pattern"}},
		{"unit with space", unitsOnly(UnitsCheck{Units: []string{"a b.service"}}), []string{"space"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate(tc.spec, host)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q shows the URL's password", err)
			}
		})
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	spec := Spec{Timeout: time.Minute, Checks: []Check{
		{Name: "web", HTTP: &HTTPCheck{URL: "http://192.0.2.99/"}},
		cmdCheck("cmd", time.Second, "true"),
	}}
	err := Validate(spec, nil)
	if err == nil || !strings.Contains(err.Error(), `"web"`) || !strings.Contains(err.Error(), `"cmd"`) {
		t.Fatalf("error %v does not name both checks", err)
	}
}
