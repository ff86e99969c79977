# vendorHash of each Go module: the NAR hash of its `go mod vendor` tree. Refresh after
# any go.mod/go.sum change with `nix/vendor-hash.sh agent` (and `operator`) and paste
# the output here; a stale hash fails the build with the right one in the message.
{
  agent = "sha256-DEmOFfkApSV7p//OagmQbAj93GRA+1NRv3w6GrChAtU=";
  operator = "sha256-ad2XbcEZpGGaoV2sU1DdHMcsrfKqEePIIShvfqVZsAc=";
}
