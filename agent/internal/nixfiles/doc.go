// Package nixfiles holds no code: its test parses every .nix file of the repository
// (nix/, the test fixtures, examples) with nix-instantiate --parse, so `make test`
// catches a broken flake or module that cannot be evaluated here without nixpkgs.
package nixfiles
