module weave-compute.local/weave

// The standard library only: no require lines, and none may be added
// (DESIGN.md: clients/go depends on nothing outside Go's standard library).
go 1.23
