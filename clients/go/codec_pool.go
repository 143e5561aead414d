package weave

// The pool's parts of Status and ChannelStats (added in protocol version
// 2): one WorkerReport and one WorkerChannelStats per worker, both
// directions as in codec.go.

func decodeLoaded(d *decoder, what string) *LoadedModel {
	if !d.some(what) {
		return nil
	}
	return &LoadedModel{
		ModelID:     d.str(what + ".model_id"),
		LoadedForS:  d.u64(what + ".loaded_for_s"),
		IdleForS:    d.u64(what + ".idle_for_s"),
		MemoryBytes: d.u64(what + ".memory_bytes"),
	}
}

func encodeLoaded(e *encoder, m *LoadedModel) {
	if e.some(m != nil) {
		e.str(m.ModelID)
		e.u64(m.LoadedForS)
		e.u64(m.IdleForS)
		e.u64(m.MemoryBytes)
	}
}

func decodeMemory(d *decoder, what string) *WorkerMemory {
	if !d.some(what) {
		return nil
	}
	return &WorkerMemory{
		ResidentBytes: d.u64(what + ".resident_bytes"),
		PeakBytes:     d.u64(what + ".peak_bytes"),
	}
}

func encodeMemory(e *encoder, m *WorkerMemory) {
	if e.some(m != nil) {
		e.u64(m.ResidentBytes)
		e.u64(m.PeakBytes)
	}
}

func decodeWorkerReport(d *decoder) WorkerReport {
	return WorkerReport{
		Index:    d.u32("workers.index"),
		Device:   d.str("workers.device"),
		State:    WorkerState(d.variant(uint32(workerStateCount), "workers.state")),
		Restarts: d.u32("workers.restarts"),
		Loaded:   decodeLoaded(d, "workers.loaded"),
		JobID:    d.optU64("workers.job_id"),
		Loads:    d.u64("workers.loads"),
		Memory:   decodeMemory(d, "workers.memory"),
		Sandbox:  d.str("workers.sandbox"),
	}
}

func encodeWorkerReport(e *encoder, w *WorkerReport) {
	e.u32(w.Index)
	e.str(w.Device)
	e.variant(uint32(w.State))
	e.u32(w.Restarts)
	encodeLoaded(e, w.Loaded)
	e.optU64(w.JobID)
	e.u64(w.Loads)
	encodeMemory(e, w.Memory)
	e.str(w.Sandbox)
}

func decodeSegments(d *decoder, what string) []SegmentStats {
	n := d.length(what)
	out := make([]SegmentStats, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		out = append(out, SegmentStats{
			Direction:       ChannelDirection(d.variant(uint32(channelDirectionCount), "direction")),
			Slots:           d.u32("slots"),
			SlotSize:        d.u32("slot_size"),
			WriteSeq:        d.u64("write_seq"),
			ReadSeq:         d.u64("read_seq"),
			CRCFailures:     d.u64("crc_failures"),
			TagFailures:     d.u64("tag_failures"),
			ReplaysRejected: d.u64("replays_rejected"),
		})
	}
	return out
}

func encodeSegments(e *encoder, segments []SegmentStats) {
	e.uvarint(uint64(len(segments)))
	for _, s := range segments {
		e.variant(uint32(s.Direction))
		e.u32(s.Slots)
		e.u32(s.SlotSize)
		e.u64(s.WriteSeq)
		e.u64(s.ReadSeq)
		e.u64(s.CRCFailures)
		e.u64(s.TagFailures)
		e.u64(s.ReplaysRejected)
	}
}

func decodeChannelStats(d *decoder) ChannelStatsReport {
	c := ChannelStatsReport{
		KeyGeneration: d.u64("key_generation"),
		Segments:      decodeSegments(d, "segments"),
	}
	n := d.length("workers")
	c.Workers = make([]WorkerChannelStats, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		c.Workers = append(c.Workers, WorkerChannelStats{
			Worker:        d.u32("workers.worker"),
			KeyGeneration: d.u64("workers.key_generation"),
			Segments:      decodeSegments(d, "workers.segments"),
		})
	}
	return c
}

func encodeChannelStats(e *encoder, c *ChannelStatsReport) {
	e.u64(c.KeyGeneration)
	encodeSegments(e, c.Segments)
	e.uvarint(uint64(len(c.Workers)))
	for i := range c.Workers {
		e.u32(c.Workers[i].Worker)
		e.u64(c.Workers[i].KeyGeneration)
		encodeSegments(e, c.Workers[i].Segments)
	}
}
