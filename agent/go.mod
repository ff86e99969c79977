module github.com/homystack/nio/agent

go 1.26.0

require (
	github.com/homystack/nio/api v0.0.0
	github.com/homystack/nio/testkit v0.0.0
)

replace github.com/homystack/nio/api => ../api

replace github.com/homystack/nio/testkit => ../testkit
