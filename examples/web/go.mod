module weave-compute.local/web

// The standard library and the Go client in this repository, nothing else.
go 1.23

require weave-compute.local/weave v0.0.0

replace weave-compute.local/weave => ../../clients/go
