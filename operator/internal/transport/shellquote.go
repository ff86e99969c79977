package transport

import (
	"errors"
	"fmt"
	"strings"
)

// shellCommand turns an argv into the one command line an SSH server hands to the
// login shell. It is the only place remote command text is made: every argument is
// quoted POSIX single-quote style (wrapped in single quotes; a single quote inside
// closes the quoting, is escaped with a backslash and reopens it), so the remote shell
// sees exactly these arguments and never interprets any of their bytes. Arguments
// with a NUL byte can't be passed through a shell and are refused.
func shellCommand(argv []string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("empty command")
	}
	var b strings.Builder
	for i, arg := range argv {
		if strings.IndexByte(arg, 0) >= 0 {
			return "", fmt.Errorf("argument %d contains a NUL byte", i)
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteByte('\'')
		b.WriteString(strings.ReplaceAll(arg, "'", `'\''`))
		b.WriteByte('\'')
	}
	return b.String(), nil
}
