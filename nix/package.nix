# One Go binary of the NIO repository. The Go modules `replace` their siblings
# (../api, ../testkit), so the source is the repository root and modRoot picks the
# module; only the Go modules are copied, so editing docs does not rebuild.
{ lib
, buildGoModule
, pname
, version
, modRoot
, subPackages
, vendorHash
}:

buildGoModule {
  inherit pname version modRoot subPackages vendorHash;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [ ../api ../agent ../operator ../testkit ];
  };

  # go.work is not copied, but say so: each module is built on its own, with its
  # replace directives, as `go mod vendor` (which refuses workspace mode) needs.
  env.GOWORK = "off";
  overrideModAttrs = _: { env.GOWORK = "off"; };

  env.CGO_ENABLED = "0";
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
