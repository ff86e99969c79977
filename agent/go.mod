module github.com/homystack/nio/agent

go 1.26.0

require (
	github.com/homystack/nio/api v0.0.0
	github.com/homystack/nio/testkit v0.0.0
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
)

require (
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
)

replace github.com/homystack/nio/api => ../api

replace github.com/homystack/nio/testkit => ../testkit
