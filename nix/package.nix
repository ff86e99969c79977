# One Go binary of the NIO repository. The Go modules `replace` their siblings
# (../api, ../testkit), so the source is the repository root and modRoot picks the
# module; only the Go modules are copied, so editing docs does not rebuild.
{ lib
  # go.mod says `go 1.26.0`, and the builders set GOTOOLCHAIN=local (no toolchain
  # download in the sandbox): nixpkgs' default Go may be older at the revision a user
  # pins, so ask for 1.26 by name. Minimum nixpkgs: buildGo126Module came with
  # go_1_26 (NixOS/nixpkgs#471483, December 2025) but at 1.26rc1, which a `go 1.26.0`
  # go.mod refuses; it must be at 1.26.0 or later, i.e. nixos-unstable from February
  # 2026, or NixOS 26.05. flake.nix says so when the attribute is missing.
, buildGo126Module
, pname
, version
, modRoot
, subPackages
, vendorHash
  # Extra install steps (the nio command's kubectl plugin link).
, postInstall ? ""
}:

buildGo126Module {
  inherit pname version modRoot subPackages vendorHash postInstall;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [ ../api ../agent ../operator ../testkit ];
  };

  # go.work is not copied, but say so: each module is built on its own, with its
  # replace directives, as `go mod vendor` (which refuses workspace mode) needs.
  env = {
    GOWORK = "off";
    CGO_ENABLED = "0";
  };
  # The vendor derivation (goModules) inherits env in current nixpkgs; older ones did
  # not. Add GOWORK to whatever env it has, never replace it: that env also holds
  # GOTOOLCHAIN=local, GOOS/GOARCH and CGO_ENABLED.
  overrideModAttrs = old: { env = (old.env or { }) // { GOWORK = "off"; }; };
  ldflags = [ "-s" "-w" "-X main.version=${version}" ];

  # The tests need real Nix, sshd and a Kubernetes control plane: `make test` in the
  # repository runs them, not the package build.
  doCheck = false;

  meta = {
    description = "NIO — NixOS Infrastructure Operator (${pname})";
    homepage = "https://github.com/homystack/nio";
    license = lib.licenses.asl20;
    mainProgram = pname;
    platforms = lib.platforms.linux;
  };
}
