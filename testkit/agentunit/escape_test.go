package agentunit

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/homystack/nio/testkit/nixtest"
)

// hardArgs are arguments that a shell-quoting ExecStart would get wrong: specifiers,
// variables, quotes of both kinds, backslashes, separators, whitespace, non-ASCII.
var hardArgs = []string{
	"plain", "", "with space", "100%", "%h/%n", "$HOME", "${HOME}", "$$", "it's", `say "hi"`,
	`back\slash`, `\x41`, ";", "a;b", "tab\there", "new\nline", "cr\rhere", "\x01\x1f\x7f",
	"é ü 日本", "<>&", "\u2028", "--max-source-bytes=268435456",
}

func TestEscapeExecArgWritesWhatSystemdUnquotesBack(t *testing.T) {
	for arg, want := range map[string]string{
		"plain":      `"plain"`,
		"100%":       `"100%%"`,
		"$HOME":      `"$$HOME"`,
		`say "hi"`:   `"say \"hi\""`,
		`back\slash`: `"back\\slash"`,
		"new\nline":  `"new\nline"`,
		"\b\f\x01":   `"\b\f\u0001"`,
		"<>&":        `"<>&"`,
	} {
		if got, err := EscapeExecArg(arg); err != nil || got != want {
			t.Errorf("EscapeExecArg(%q) = %s, %v; want %s", arg, got, err, want)
		}
	}
	if _, err := EscapeExecArg("\xff"); err == nil {
		t.Error("invalid UTF-8 was accepted")
	}
}

// The rule is nixpkgs' (replaceStrings ["%" "$"] ["%%" "$$"] (toJSON arg)); this
// checks the Go side against the real builtins.toJSON of the machine's Nix, through
// the stub utils the module evaluation uses. \b and \f are left out: Nix before
// 2.19 writes them as \u0008 and \u000c (systemd reads both forms the same).
func TestEscapeExecArgMatchesNixToJSON(t *testing.T) {
	env := nixtest.New(t)
	args, err := json.Marshal(hardArgs)
	if err != nil {
		t.Fatal(err)
	}
	expr := `{ argsJSON }: let lib = import ` + filepath.Join(nixDir(t), "tests", "stub-lib.nix") +
		`; utils = import ` + filepath.Join(nixDir(t), "tests", "stub-utils.nix") +
		` { inherit lib; }; in map utils.escapeSystemdExecArg (builtins.fromJSON argsJSON)`
	cmd := exec.Command("nix-instantiate", "--eval", "--strict", "--json", "--expr", expr, "--argstr", "argsJSON", string(args))
	cmd.Env = env.Environ()
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix-instantiate: %v\n%s", err, stderrOf(err))
	}
	var fromNix []string
	if err := json.Unmarshal(out, &fromNix); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for i, arg := range hardArgs {
		got, err := EscapeExecArg(arg)
		if err != nil {
			t.Fatal(err)
		}
		if got != fromNix[i] {
			t.Errorf("EscapeExecArg(%q) = %s, Nix: %s", arg, got, fromNix[i])
		}
	}
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}
