package health

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// Validate reports every problem of spec, each naming its check. hostAddrs are the
// host's own addresses (see HostAddrs): with loopback addresses and "localhost" the
// only hosts an HTTP check may name without AllowRemote. Names are never resolved
// here — a DNS name other than localhost needs AllowRemote, since what it resolves
// to may change between validation and the check. An empty spec (no checks) is valid.
func Validate(spec Spec, hostAddrs []netip.Addr) error {
	errs := specErrors(spec)
	for _, c := range spec.Checks {
		if c.HTTP != nil {
			if err := hostPolicy(c.HTTP, hostAddrs); err != nil {
				errs = append(errs, checkErr(c, err))
			}
		}
	}
	return errors.Join(errs...)
}

// specErrors is Validate without the host policy, which needs the host's addresses.
func specErrors(spec Spec) []error {
	if len(spec.Checks) == 0 {
		return nil
	}
	var errs []error
	if len(spec.Checks) > MaxChecks {
		errs = append(errs, fmt.Errorf("health checks: %d checks, at most %d are allowed", len(spec.Checks), MaxChecks))
	}
	switch {
	case spec.Timeout <= 0:
		errs = append(errs, fmt.Errorf("health checks: the overall timeout must be positive, not %s", spec.Timeout))
	case spec.Timeout > MaxTimeout:
		errs = append(errs, fmt.Errorf("health checks: the overall timeout %s is above the maximum %s", spec.Timeout, MaxTimeout))
	}
	if iv := spec.interval(); iv < MinInterval {
		errs = append(errs, fmt.Errorf("health checks: the retry interval %s is below the minimum %s", spec.Interval, MinInterval))
	} else if spec.Timeout > 0 && iv > spec.Timeout {
		errs = append(errs, fmt.Errorf("health checks: the retry interval %s is longer than the overall timeout %s", iv, spec.Timeout))
	}
	seen := map[string]bool{}
	for i, c := range spec.Checks {
		if c.Name == "" {
			errs = append(errs, fmt.Errorf("health check #%d: a name is required", i+1))
		} else if seen[c.Name] {
			errs = append(errs, fmt.Errorf("health check %q: the name is used by another check", c.Name))
		}
		seen[c.Name] = true
		for _, err := range checkErrors(c, spec.Timeout) {
			errs = append(errs, checkErr(c, err))
		}
	}
	return errs
}

func checkErr(c Check, err error) error {
	return fmt.Errorf("health check %q: %w", c.Name, err)
}

// checkErrors is what is wrong with c itself; overall is the Spec's timeout.
func checkErrors(c Check, overall time.Duration) []error {
	var errs []error
	if c.Name != "" && (len(c.Name) > MaxNameLength || !nameRE.MatchString(c.Name)) {
		errs = append(errs, fmt.Errorf("the name must be at most %d letters, digits, '.', '_' or '-', starting with a letter or digit", MaxNameLength))
	}
	kinds := 0
	if c.Units != nil {
		kinds++
	}
	if c.HTTP != nil {
		kinds++
	}
	if c.Command != nil {
		kinds++
	}
	if kinds != 1 {
		return append(errs, fmt.Errorf("exactly one of units, http and command must be set, not %d", kinds))
	}
	switch {
	case c.Units != nil:
		errs = append(errs, unitsErrors(c.Units)...)
	case c.HTTP != nil:
		errs = append(errs, httpErrors(c.HTTP)...)
	case c.Command != nil:
		errs = append(errs, commandErrors(c.Command, overall)...)
	}
	return errs
}

func unitsErrors(u *UnitsCheck) []error {
	var errs []error
	if len(u.Units) == 0 && !u.NoNewFailures {
		errs = append(errs, errors.New("a units check needs units, noNewFailures, or both"))
	}
	if len(u.Units) > MaxUnitsPerCheck {
		errs = append(errs, fmt.Errorf("%d units, at most %d are allowed per check", len(u.Units), MaxUnitsPerCheck))
	}
	for _, name := range u.Units {
		if err := unitNameError(name); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// unitNameError refuses what systemctl would take as an option or a pattern, or what
// cannot be a unit name at all; the rest is systemd's to judge (an unknown unit is
// simply not active).
func unitNameError(name string) error {
	switch {
	case name == "":
		return errors.New("an empty unit name")
	case len(name) > 256:
		return fmt.Errorf("unit name %.40q… is longer than 256 bytes", name)
	case strings.HasPrefix(name, "-"):
		return fmt.Errorf("unit name %q starts with '-'", name)
	case strings.ContainsAny(name, "*?[]"):
		return fmt.Errorf("unit name %q is a pattern; name each unit", name)
	case strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r == 0x7f || r == '/' }):
		return fmt.Errorf("unit name %q has a space, a control character or '/'", name)
	}
	return nil
}

func httpErrors(h *HTTPCheck) []error {
	var errs []error
	if h.ExpectStatus != 0 && (h.ExpectStatus < 100 || h.ExpectStatus > 599) {
		errs = append(errs, fmt.Errorf("expected status %d is not an HTTP status (100-599)", h.ExpectStatus))
	}
	if _, err := parseURL(h.URL); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// parseURL accepts an absolute http or https URL with a host and no credentials.
func parseURL(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("a URL is required")
	}
	if len(raw) > MaxURLLength {
		return nil, fmt.Errorf("the URL is longer than %d bytes", MaxURLLength)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("URL %q: the scheme must be http or https", u.Redacted())
	}
	if u.Opaque != "" || u.Hostname() == "" {
		return nil, fmt.Errorf("URL %q has no host", u.Redacted())
	}
	if u.User != nil {
		// They would be in every log line and event naming the URL.
		return nil, fmt.Errorf("URL %q carries credentials; they are not supported", u.Redacted())
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("URL %q: port %q is not a TCP port", u.Redacted(), p)
		}
	}
	return u, nil
}

// hostPolicy refuses an HTTP check's host outside this machine unless AllowRemote.
func hostPolicy(h *HTTPCheck, hostAddrs []netip.Addr) error {
	if h.AllowRemote {
		return nil
	}
	u, err := parseURL(h.URL)
	if err != nil {
		return nil // reported by httpErrors
	}
	host := u.Hostname()
	ip, err := netip.ParseAddr(host)
	if err != nil {
		if isLocalhost(host) {
			return nil
		}
		return fmt.Errorf("URL host %q is a name, and names other than localhost are not resolved to decide whether they are this host: use an IP address of this host, or set allowRemote", host)
	}
	ip = ip.Unmap().WithZone("")
	if ip.IsLoopback() {
		return nil
	}
	for _, a := range hostAddrs {
		if a.Unmap().WithZone("") == ip {
			return nil
		}
	}
	return fmt.Errorf("URL host %s is neither a loopback address nor an address of this host; set allowRemote to check another host", ip)
}

func isLocalhost(host string) bool {
	return strings.EqualFold(strings.TrimSuffix(host, "."), "localhost")
}

func commandErrors(c *CommandCheck, overall time.Duration) []error {
	var errs []error
	switch {
	case len(c.Argv) == 0:
		errs = append(errs, errors.New("a command is required"))
	case len(c.Argv) > MaxArgs:
		errs = append(errs, fmt.Errorf("%d arguments, at most %d are allowed", len(c.Argv), MaxArgs))
	case !filepath.IsAbs(c.Argv[0]):
		errs = append(errs, fmt.Errorf("command %q must be an absolute path (there is no PATH lookup)", c.Argv[0]))
	}
	for _, a := range c.Argv {
		if strings.IndexByte(a, 0) >= 0 {
			errs = append(errs, errors.New("an argument contains a NUL byte"))
			break
		}
	}
	switch {
	case c.Timeout <= 0:
		errs = append(errs, fmt.Errorf("the command's timeout must be positive, not %s", c.Timeout))
	case overall > 0 && c.Timeout > overall:
		errs = append(errs, fmt.Errorf("the command's timeout %s is longer than the overall timeout %s", c.Timeout, overall))
	}
	return errs
}
