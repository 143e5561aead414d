package weave

import "runtime"

// runtimeMem measures the bytes a function allocates.
type runtimeMem struct{ bytes uint64 }

func (m *runtimeMem) measure(f func()) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	m.bytes = after.TotalAlloc - before.TotalAlloc
}
