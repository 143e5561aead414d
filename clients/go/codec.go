package weave

// Request and Response bodies, both directions: the client encodes
// requests and decodes responses; the reverse directions let the tests pin
// every example of docs/PROTOCOL.md and let the fuzzer check that whatever
// decodes re-encodes to the same bytes (one message, one byte form).

// requestKind is the Request variant index.
type requestKind uint32

const (
	reqHello requestKind = iota
	reqListModels
	reqStatus
	reqGenerate
	reqCancel
	reqJobs
	reqLoad
	reqUnload
	reqPin
	reqUnpin
	reqDrain
	reqResume
	reqRotateKeys
	reqChannelStats
	reqAllJobs
	reqQuarantineClear
	requestKindCount
)

// The verb names the broker uses in NotPermitted and its audit log.
var verbNames = [requestKindCount]string{
	"hello", "list_models", "status", "generate", "cancel", "jobs", "load", "unload", "pin",
	"unpin", "drain", "resume", "rotate_keys", "channel_stats", "all_jobs", "quarantine_clear",
}

func (k requestKind) String() string {
	if k < requestKindCount {
		return verbNames[k]
	}
	return "unknown"
}

// request is one Request; only the fields of its kind are used.
type request struct {
	kind       requestKind
	version    uint16 // Hello
	clientName string // Hello
	generate   GenerateRequest
	jobID      uint64 // Cancel
	modelID    string // Load, Pin, Unpin, QuarantineClear
}

func (r *request) encode(e *encoder) {
	e.variant(uint32(r.kind))
	switch r.kind {
	case reqHello:
		e.u16(r.version)
		e.str(r.clientName)
	case reqGenerate:
		g := &r.generate
		e.str(g.ModelID)
		e.str(g.Prompt)
		e.str(g.NegativePrompt)
		e.optU32(g.Width)
		e.optU32(g.Height)
		e.optU32(g.Steps)
		e.optF32(g.Guidance)
		e.optU64(g.Seed)
		if e.some(g.Scheduler != nil) {
			e.variant(uint32(*g.Scheduler))
		}
		e.u32(g.Batch)
		e.optStr(g.Tag)
		e.bool(g.UseModelNegative)
		e.optBytes(g.InitImage)
		e.optBytes(g.Mask)
		e.optF32(g.Strength)
		e.u32(uint32(len(g.Loras)))
		for _, l := range g.Loras {
			e.str(l.ID)
			e.f32(l.Weight)
		}
		e.u32(g.PreviewEvery)
	case reqCancel:
		e.u64(r.jobID)
	case reqLoad, reqPin, reqUnpin, reqQuarantineClear:
		e.str(r.modelID)
	case reqListModels, reqStatus, reqJobs, reqUnload, reqDrain, reqResume, reqRotateKeys,
		reqChannelStats, reqAllJobs, requestKindCount:
	}
}

func decodeRequest(body []byte) (*request, error) {
	d := &decoder{b: body}
	r := &request{kind: requestKind(d.variant(uint32(requestKindCount), "Request"))}
	switch r.kind {
	case reqHello:
		r.version = d.u16("version")
		r.clientName = d.str("client_name")
	case reqGenerate:
		g := &r.generate
		g.ModelID = d.str("model_id")
		g.Prompt = d.str("prompt")
		g.NegativePrompt = d.str("negative_prompt")
		g.Width = d.optU32("width")
		g.Height = d.optU32("height")
		g.Steps = d.optU32("steps")
		g.Guidance = d.optF32("guidance")
		g.Seed = d.optU64("seed")
		if d.some("scheduler") {
			s := Scheduler(d.variant(uint32(schedulerCount), "scheduler"))
			g.Scheduler = &s
		}
		g.Batch = d.u32("batch")
		g.Tag = d.optStr("tag")
		g.UseModelNegative = d.bool("use_model_negative")
		g.InitImage = d.optBytes("init_image")
		g.Mask = d.optBytes("mask")
		g.Strength = d.optF32("strength")
		if n := d.length("loras"); n > 0 {
			g.Loras = make([]LoraChoice, 0, n)
			for i := 0; i < n; i++ {
				g.Loras = append(g.Loras, LoraChoice{ID: d.str("loras.id"), Weight: d.f32("loras.weight")})
			}
		}
		g.PreviewEvery = d.u32("preview_every")
	case reqCancel:
		r.jobID = d.u64("job_id")
	case reqLoad, reqPin, reqUnpin, reqQuarantineClear:
		r.modelID = d.str("model_id")
	case reqListModels, reqStatus, reqJobs, reqUnload, reqDrain, reqResume, reqRotateKeys,
		reqChannelStats, reqAllJobs, requestKindCount:
	}
	if err := d.finish(); err != nil {
		return nil, err
	}
	return r, nil
}

// responseKind is the Response variant index.
type responseKind uint32

const (
	respHello responseKind = iota
	respModels
	respStatus
	respQueued
	respPosition
	respStarted
	respProgress
	respImage
	respFinished
	respJobs
	respChannelStats
	respOK
	respError
	respPreview // added in protocol version 2
	responseKindCount
)

var responseNames = [responseKindCount]string{
	"Hello", "Models", "Status", "Queued", "Position", "Started", "Progress", "Image",
	"Finished", "Jobs", "ChannelStats", "Ok", "Error", "Preview",
}

func (k responseKind) String() string {
	if k < responseKindCount {
		return responseNames[k]
	}
	return "unknown"
}

// response is one Response; only the field of its kind is set.
type response struct {
	kind    responseKind
	hello   ServerInfo
	models  []ModelInfo
	status  StatusReport
	event   Event
	jobs    []JobInfo
	channel ChannelStatsReport
	err     DaemonError
}

func decodeResponse(body []byte) (*response, error) {
	d := &decoder{b: body}
	r := &response{kind: responseKind(d.variant(uint32(responseKindCount), "Response"))}
	switch r.kind {
	case respHello:
		r.hello = ServerInfo{
			Version:       d.u16("version"),
			ServerVersion: d.str("server_version"),
			Role:          Role(d.variant(uint32(roleCount), "role")),
			Mode:          Mode(d.variant(uint32(modeCount), "mode")),
		}
	case respModels:
		n := d.length("models")
		r.models = make([]ModelInfo, 0, n)
		for i := 0; i < n && d.err == nil; i++ {
			r.models = append(r.models, decodeModelInfo(d))
		}
	case respStatus:
		r.status = decodeStatus(d)
	case respQueued:
		r.event = &Queued{JobID: d.u64("job_id"), Position: d.u32("position")}
	case respPosition:
		r.event = &Position{JobID: d.u64("job_id"), Position: d.u32("position")}
	case respStarted:
		r.event = &Started{JobID: d.u64("job_id"), Seed: d.u64("seed")}
	case respProgress:
		r.event = &Progress{JobID: d.u64("job_id"), Step: d.u32("step"), Total: d.u32("total")}
	case respImage:
		r.event = &Image{
			JobID:  d.u64("job_id"),
			Index:  d.u32("index"),
			Seed:   d.u64("seed"),
			Width:  d.u32("width"),
			Height: d.u32("height"),
			PNG:    d.raw("png"),
		}
	case respFinished:
		r.event = &Finished{JobID: d.u64("job_id")}
	case respPreview:
		r.event = &Preview{
			JobID:  d.u64("job_id"),
			Index:  d.u32("index"),
			Step:   d.u32("step"),
			Total:  d.u32("total"),
			Width:  d.u32("width"),
			Height: d.u32("height"),
			PNG:    d.raw("png"),
		}
	case respJobs:
		n := d.length("jobs")
		r.jobs = make([]JobInfo, 0, n)
		for i := 0; i < n && d.err == nil; i++ {
			j := JobInfo{
				JobID:         d.u64("job_id"),
				OwnerUID:      d.u32("owner_uid"),
				Tag:           d.optStr("tag"),
				ModelID:       d.str("model_id"),
				State:         JobState(d.variant(uint32(jobStateCount), "state")),
				Position:      d.optU32("position"),
				SubmittedSAgo: d.u64("submitted_s_ago"),
				Step:          d.u32("step"),
				Total:         d.u32("total"),
				Device:        d.optStr("device"),
				RunMs:         d.optU64("run_ms"),
			}
			if d.some("error") {
				j.Error = daemonErrorFor(d)
			}
			j.Worker = d.optU32("worker")
			r.jobs = append(r.jobs, j)
		}
	case respChannelStats:
		r.channel = decodeChannelStats(d)
	case respOK, responseKindCount:
	case respError:
		r.err = daemonErrorFor(d)
	}
	if err := d.finish(); err != nil {
		return nil, err
	}
	return r, nil
}

func decodeModelInfo(d *decoder) ModelInfo {
	return ModelInfo{
		ID:          d.str("id"),
		Kind:        d.str("kind"),
		Loaded:      d.bool("loaded"),
		Pinned:      d.bool("pinned"),
		Quarantined: d.bool("quarantined"),
		Defaults: GenerationDefaults{
			Width:     d.u32("defaults.width"),
			Height:    d.u32("defaults.height"),
			Steps:     d.u32("defaults.steps"),
			Guidance:  d.f32("defaults.guidance"),
			Scheduler: Scheduler(d.variant(uint32(schedulerCount), "defaults.scheduler")),
		},
		Bounds: ParamBounds{
			MinWidth:             d.u32("bounds.min_width"),
			MaxWidth:             d.u32("bounds.max_width"),
			MinHeight:            d.u32("bounds.min_height"),
			MaxHeight:            d.u32("bounds.max_height"),
			MaxSteps:             d.u32("bounds.max_steps"),
			MinGuidance:          d.f32("bounds.min_guidance"),
			MaxGuidance:          d.f32("bounds.max_guidance"),
			MaxPromptLen:         d.u32("bounds.max_prompt_len"),
			MaxNegativePromptLen: d.u32("bounds.max_negative_prompt_len"),
			MaxBatch:             d.u32("bounds.max_batch"),
			MaxTagLen:            d.u32("bounds.max_tag_len"),
		},
		Available: d.bool("available"),
		Reason:    d.optStr("reason"),
	}
}

func decodeStatus(d *decoder) StatusReport {
	s := StatusReport{
		DaemonVersion: d.str("daemon_version"),
		Mode:          Mode(d.variant(uint32(modeCount), "mode")),
		UptimeS:       d.u64("uptime_s"),
	}
	s.Loaded = decodeLoaded(d, "loaded")
	s.QueueDepth = d.u32("queue_depth")
	s.Draining = d.bool("draining")
	s.Worker = WorkerState(d.variant(uint32(workerStateCount), "worker"))
	s.WorkerRestarts = d.u32("worker_restarts")
	s.Sandbox = d.str("sandbox")
	s.Device = d.optStr("device")
	s.WorkerError = d.optStr("worker_error")
	s.WorkerMemory = decodeMemory(d, "worker_memory")
	n := d.length("workers")
	s.Workers = make([]WorkerReport, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		s.Workers = append(s.Workers, decodeWorkerReport(d))
	}
	return s
}

func (r *response) encode(e *encoder) {
	e.variant(uint32(r.kind))
	switch r.kind {
	case respHello:
		e.u16(r.hello.Version)
		e.str(r.hello.ServerVersion)
		e.variant(uint32(r.hello.Role))
		e.variant(uint32(r.hello.Mode))
	case respModels:
		e.uvarint(uint64(len(r.models)))
		for i := range r.models {
			encodeModelInfo(e, &r.models[i])
		}
	case respStatus:
		s := &r.status
		e.str(s.DaemonVersion)
		e.variant(uint32(s.Mode))
		e.u64(s.UptimeS)
		encodeLoaded(e, s.Loaded)
		e.u32(s.QueueDepth)
		e.bool(s.Draining)
		e.variant(uint32(s.Worker))
		e.u32(s.WorkerRestarts)
		e.str(s.Sandbox)
		e.optStr(s.Device)
		e.optStr(s.WorkerError)
		encodeMemory(e, s.WorkerMemory)
		e.uvarint(uint64(len(s.Workers)))
		for i := range s.Workers {
			encodeWorkerReport(e, &s.Workers[i])
		}
	case respQueued, respPosition, respStarted, respProgress, respImage, respFinished, respPreview:
		encodeEvent(e, r.event)
	case respJobs:
		e.uvarint(uint64(len(r.jobs)))
		for _, j := range r.jobs {
			e.u64(j.JobID)
			e.u32(j.OwnerUID)
			e.optStr(j.Tag)
			e.str(j.ModelID)
			e.variant(uint32(j.State))
			e.optU32(j.Position)
			e.u64(j.SubmittedSAgo)
			e.u32(j.Step)
			e.u32(j.Total)
			e.optStr(j.Device)
			e.optU64(j.RunMs)
			if e.some(j.Error != nil) {
				encodeDaemonError(e, j.Error)
			}
			e.optU32(j.Worker)
		}
	case respChannelStats:
		encodeChannelStats(e, &r.channel)
	case respError:
		encodeDaemonError(e, r.err)
	case respOK, responseKindCount:
	}
}

func encodeModelInfo(e *encoder, m *ModelInfo) {
	e.str(m.ID)
	e.str(m.Kind)
	e.bool(m.Loaded)
	e.bool(m.Pinned)
	e.bool(m.Quarantined)
	e.u32(m.Defaults.Width)
	e.u32(m.Defaults.Height)
	e.u32(m.Defaults.Steps)
	e.f32(m.Defaults.Guidance)
	e.variant(uint32(m.Defaults.Scheduler))
	b := &m.Bounds
	e.u32(b.MinWidth)
	e.u32(b.MaxWidth)
	e.u32(b.MinHeight)
	e.u32(b.MaxHeight)
	e.u32(b.MaxSteps)
	e.f32(b.MinGuidance)
	e.f32(b.MaxGuidance)
	e.u32(b.MaxPromptLen)
	e.u32(b.MaxNegativePromptLen)
	e.u32(b.MaxBatch)
	e.u32(b.MaxTagLen)
	e.bool(m.Available)
	e.optStr(m.Reason)
}

func encodeEvent(e *encoder, ev Event) {
	switch ev := ev.(type) {
	case *Queued:
		e.u64(ev.JobID)
		e.u32(ev.Position)
	case *Position:
		e.u64(ev.JobID)
		e.u32(ev.Position)
	case *Started:
		e.u64(ev.JobID)
		e.u64(ev.Seed)
	case *Progress:
		e.u64(ev.JobID)
		e.u32(ev.Step)
		e.u32(ev.Total)
	case *Image:
		e.u64(ev.JobID)
		e.u32(ev.Index)
		e.u64(ev.Seed)
		e.u32(ev.Width)
		e.u32(ev.Height)
		e.bytes(ev.PNG)
	case *Finished:
		e.u64(ev.JobID)
	case *Preview:
		e.u64(ev.JobID)
		e.u32(ev.Index)
		e.u32(ev.Step)
		e.u32(ev.Total)
		e.u32(ev.Width)
		e.u32(ev.Height)
		e.bytes(ev.PNG)
	}
}
