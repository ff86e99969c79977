// Command nio is NIO for people: what runs where, the output of an operation as it
// happens, and the requests a person makes (reconcile, suspend, resume, reinstall,
// promote). It uses your kubeconfig and your own RBAC, never the operator's
// credentials. Installed as kubectl-nio it is also `kubectl nio`.
//
// Exit codes, for scripts:
//
//	0  done (and, when waiting or following, the operation succeeded)
//	1  an error (API server, network, the log endpoint)
//	2  usage: an unknown command, flag or argument
//	3  not found: no such object, or no operation log kept
//	4  not allowed: your credentials were refused, or RBAC forbids it
//	5  the operation ended, and not with success (Failed, RolledBack, …)
//	6  timed out waiting (--timeout)
//	7  cancelled (reinstall not confirmed)
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// Exit codes (see the package comment).
const (
	exitOK        = 0
	exitError     = 1
	exitUsage     = 2
	exitNotFound  = 3
	exitForbidden = 4
	exitFailed    = 5
	exitTimeout   = 6
	exitCancelled = 7
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], streams{in: os.Stdin, out: os.Stdout, err: os.Stderr}, os.Getenv))
}

// streams are the command's standard files.
type streams struct {
	in       io.Reader
	out, err io.Writer
}

// codeError ends the command with an exit code of its own.
type codeError struct {
	code int
	err  error
}

func (e *codeError) Error() string { return e.err.Error() }
func (e *codeError) Unwrap() error { return e.err }

func withCode(code int, format string, args ...any) error {
	return &codeError{code: code, err: fmt.Errorf(format, args...)}
}

// run is the whole command, for main and for tests.
func run(args []string, s streams, getenv func(string) string) int {
	root := newRoot(s, getenv)
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(s.err, "nio:", err)
	return exitCodeOf(err)
}

func exitCodeOf(err error) int {
	var ce *codeError
	switch {
	case errors.As(err, &ce):
		return ce.code
	case apierrors.IsNotFound(err):
		return exitNotFound
	case apierrors.IsForbidden(err), apierrors.IsUnauthorized(err):
		return exitForbidden
	case isUsage(err):
		return exitUsage
	}
	return exitError
}

// isUsage recognises cobra's own errors about the command line.
func isUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "accepts ", "requires ", "invalid argument", "flag needs an argument"} {
		if strings.HasPrefix(msg, p) || strings.Contains(msg, " "+p) {
			return true
		}
	}
	return false
}

func newRoot(s streams, getenv func(string) string) *cobra.Command {
	g := &globals{streams: s, getenv: getenv}
	name := "nio"
	if filepath.Base(os.Args[0]) == "kubectl-nio" {
		name = "kubectl nio"
	}
	root := &cobra.Command{
		Use:   name,
		Short: "NIO for people: Machines, NixosConfigurations and NixosFleets at a glance, and live build logs",
		Long: `nio shows what NIO runs where and streams the output of hosts' operations.
It uses your kubeconfig and your own RBAC, never the operator's credentials.

Exit codes: 0 done; 1 error; 2 usage; 3 not found; 4 not allowed; 5 the operation
ended without success; 6 timed out; 7 cancelled.`,
		Example: `  nio get                                  # this namespace's Machines, configurations, fleets
  nio logs -f worker-config                 # follow the running operation to its end
  nio reconcile worker-config --wait        # apply now, wait for the outcome
  nio fleet promote web                     # past a manual gate
  nio rollback worker-01 --wait             # back to the previous generation, suspended`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(s.in)
	root.SetOut(s.out)
	root.SetErr(s.err)
	g.bind(root)
	root.AddCommand(newGet(g), newLogs(g), newReconcile(g), newSuspend(g, true), newSuspend(g, false),
		newReinstall(g), newRollback(g), newFleet(g))
	return root
}
