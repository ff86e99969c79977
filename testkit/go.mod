module github.com/homystack/nio/testkit

go 1.26.0

require github.com/homystack/nio/api v0.0.0

replace github.com/homystack/nio/api => ../api
