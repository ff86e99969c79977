package agentunit

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// EscapeExecArg quotes one argument for an Exec*= line exactly as nixpkgs'
// utils.escapeSystemdExecArg does: the argument as a JSON string (as Nix's
// builtins.toJSON writes it), then every % doubled (no specifier expansion) and every
// $ doubled (no environment substitution). systemd unquotes "…" with C escapes, a
// superset of JSON's, so the program receives the argument unchanged.
//
// Nix ≥ 2.19 (nlohmann/json) writes \b and \f as such, older Nix as \u0008 and
// \u000c; systemd reads both the same. This follows current Nix. The argument must be
// valid UTF-8, as Nix requires of a string it writes as JSON.
func EscapeExecArg(arg string) (string, error) {
	if !utf8.ValidString(arg) {
		return "", fmt.Errorf("argument %q is not valid UTF-8", arg)
	}
	return strings.NewReplacer("%", "%%", "$", "$$").Replace(jsonString(arg)), nil
}

// EscapeExecArgs is nixpkgs' utils.escapeSystemdExecArgs: each argument escaped,
// joined with spaces.
func EscapeExecArgs(args []string) (string, error) {
	quoted := make([]string, len(args))
	for i, a := range args {
		q, err := EscapeExecArg(a)
		if err != nil {
			return "", err
		}
		quoted[i] = q
	}
	return strings.Join(quoted, " "), nil
}

// jsonString is a string as Nix's builtins.toJSON writes it: only ", \ and control
// characters escaped, everything else (non-ASCII, DEL, <, >, &) raw. encoding/json
// would escape <, >, & and U+2028/U+2029, which Nix does not.
func jsonString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		default:
			if c < 0x20 {
				fmt.Fprintf(&b, `\u%04x`, c)
			} else {
				b.WriteByte(c)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}
