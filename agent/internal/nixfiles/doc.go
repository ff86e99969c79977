// Package nixfiles holds no code: its tests parse every .nix file of the repository
// (nix/, the test fixtures, examples) with nix-instantiate --parse, and evaluate
// nix/flake.nix's outputs offline with the stub nixpkgs of nix/tests/eval-flake.nix
// (the builder records its arguments; nothing is built), so `make nix-check`
// catches a broken flake here without nixpkgs. The module's unit is compared with
// testkit/agentunit's by that package's tests.
package nixfiles
