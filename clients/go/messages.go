package weave

import "fmt"

// ProtocolVersion is the version this client speaks in the Hello
// handshake. The broker accepts only its own version.
const ProtocolVersion uint16 = 2

const (
	// MaxRequestFrame is the largest request body the broker reads; the
	// client refuses to send a larger one (RequestTooLargeError).
	MaxRequestFrame = 65536
	// DefaultMaxImageRequestFrame is the broker's default bound
	// (limits.max_image_request_bytes) on a Generate that carries
	// InitImage; only such a request may exceed MaxRequestFrame.
	DefaultMaxImageRequestFrame = 8 << 20
	// MaxImageRequestFrame is the most any broker configuration allows for
	// an image request; the client refuses to send a larger one.
	MaxImageRequestFrame = 24 << 20
	// DefaultStrength is the strength the broker applies when InitImage is
	// sent without Strength.
	DefaultStrength float32 = 0.75
	// DefaultMaxResponseFrame is the largest response body a Dialer accepts
	// unless told otherwise (Image events carry a whole PNG).
	DefaultMaxResponseFrame = 64 << 20
)

// Role is what the caller's credentials grant on this connection.
type Role uint32

const (
	RoleClient Role = iota
	RoleAdmin
	roleCount
)

func (r Role) String() string {
	switch r {
	case RoleClient:
		return "client"
	case RoleAdmin:
		return "admin"
	}
	return fmt.Sprintf("Role(%d)", uint32(r))
}

// Mode is how the daemon runs: for one user, or system-wide.
type Mode uint32

const (
	ModeUser Mode = iota
	ModeSystem
	modeCount
)

func (m Mode) String() string {
	switch m {
	case ModeUser:
		return "user"
	case ModeSystem:
		return "system"
	}
	return fmt.Sprintf("Mode(%d)", uint32(m))
}

// Scheduler is a sampling scheduler the engine implements.
type Scheduler uint32

const (
	SchedulerDDIM Scheduler = iota
	SchedulerEuler
	SchedulerEulerAncestral
	SchedulerDPMPP2M
	SchedulerDPMPP2MKarras
	schedulerCount
)

var schedulerNames = [schedulerCount]string{"ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras"}

// String is the name used in configs and on the command line.
func (s Scheduler) String() string {
	if s < schedulerCount {
		return schedulerNames[s]
	}
	return fmt.Sprintf("Scheduler(%d)", uint32(s))
}

// Schedulers lists every scheduler in wire order.
func Schedulers() []Scheduler {
	out := make([]Scheduler, schedulerCount)
	for i := range out {
		out[i] = Scheduler(i)
	}
	return out
}

// ParseScheduler turns a config name ("ddim", "euler_a", ...) into a
// Scheduler.
func ParseScheduler(name string) (Scheduler, error) {
	for i, n := range schedulerNames {
		if n == name {
			return Scheduler(i), nil
		}
	}
	return 0, fmt.Errorf("unknown scheduler %q; use one of: ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras", name)
}

// WorkerState is the state of the sandboxed worker process.
type WorkerState uint32

const (
	WorkerStarting WorkerState = iota
	WorkerReady
	WorkerRestarting
	WorkerDown
	workerStateCount
)

func (w WorkerState) String() string {
	switch w {
	case WorkerStarting:
		return "starting"
	case WorkerReady:
		return "ready"
	case WorkerRestarting:
		return "restarting"
	case WorkerDown:
		return "down"
	}
	return fmt.Sprintf("WorkerState(%d)", uint32(w))
}

// JobState is the state of a listed job.
type JobState uint32

const (
	JobQueued JobState = iota
	JobRunning
	JobCancelling
	JobFinished // the broker's history of ended jobs; added in protocol version 2
	JobFailed   // ended with JobInfo.Error; added in protocol version 2
	jobStateCount
)

func (j JobState) String() string {
	switch j {
	case JobQueued:
		return "queued"
	case JobRunning:
		return "running"
	case JobCancelling:
		return "cancelling"
	case JobFinished:
		return "finished"
	case JobFailed:
		return "failed"
	}
	return fmt.Sprintf("JobState(%d)", uint32(j))
}

// ChannelDirection says which way a shared-memory segment carries data.
type ChannelDirection uint32

const (
	BrokerToWorker ChannelDirection = iota
	WorkerToBroker
	channelDirectionCount
)

func (c ChannelDirection) String() string {
	switch c {
	case BrokerToWorker:
		return "broker_to_worker"
	case WorkerToBroker:
		return "worker_to_broker"
	}
	return fmt.Sprintf("ChannelDirection(%d)", uint32(c))
}

// ServerInfo is the broker's answer to the handshake.
type ServerInfo struct {
	Version       uint16
	ServerVersion string // informational
	Role          Role
	Mode          Mode
}

// GenerateRequest holds the parameters of one generation job. A nil
// pointer means "the model's default" (ModelInfo.Defaults); a nil Seed
// means a random seed, reported back in Started and Image.
type GenerateRequest struct {
	ModelID        string
	Prompt         string
	NegativePrompt string // empty: none, or the model's default with UseModelNegative
	Width          *uint32
	Height         *uint32
	Steps          *uint32
	Guidance       *float32
	Seed           *uint64
	Scheduler      *Scheduler
	Batch          uint32 // images, at least 1; image i uses seed Seed+i
	Tag            *string
	// UseModelNegative: an empty NegativePrompt means the model's default
	// negative prompt ([model.defaults] negative_prompt). False: the
	// NegativePrompt is used as sent, and empty means none.
	UseModelNegative bool
	// InitImage: img2img and inpainting start from these PNG bytes; nil:
	// text to image.
	InitImage []byte
	// Mask: inpainting, a PNG the size of InitImage, white = repaint.
	Mask []byte
	// Strength: img2img denoising strength in (0, 1]; nil: the default.
	Strength *float32
	// Loras: configured LoRA ids with their weights, applied in order.
	Loras []LoraChoice
	// PreviewEvery: a Preview event every this many steps; 0: none.
	PreviewEvery uint32
}

// LoraChoice names one configured LoRA ([[lora]] id) and its weight.
type LoraChoice struct {
	ID     string
	Weight float32
}

// Ptr returns a pointer to v, for the optional fields of GenerateRequest.
func Ptr[T any](v T) *T { return &v }

// GenerationDefaults are what a request that leaves a field out gets.
type GenerationDefaults struct {
	Width     uint32
	Height    uint32
	Steps     uint32
	Guidance  float32
	Scheduler Scheduler
}

// ParamBounds are the limits a GenerateRequest must stay within. Lengths
// are in bytes of UTF-8.
type ParamBounds struct {
	MinWidth             uint32
	MaxWidth             uint32
	MinHeight            uint32
	MaxHeight            uint32
	MaxSteps             uint32
	MinGuidance          float32
	MaxGuidance          float32
	MaxPromptLen         uint32
	MaxNegativePromptLen uint32
	MaxBatch             uint32
	MaxTagLen            uint32
}

// ModelInfo is one configured model as a caller sees it (never a path).
type ModelInfo struct {
	ID          string
	Kind        string // the config's kind: "sd1", "sd2" or "sdxl"
	Loaded      bool
	Pinned      bool
	Quarantined bool
	Defaults    GenerationDefaults
	Bounds      ParamBounds
	// Available: a job on this model can run (its files passed the
	// broker's checks and it is not quarantined). Reason says why not, to
	// admin connections only (nil for clients). Added in protocol version 2.
	Available bool
	Reason    *string
}

// LoadedModel is the model resident in the worker. Times are ages.
type LoadedModel struct {
	ModelID     string
	LoadedForS  uint64
	IdleForS    uint64
	MemoryBytes uint64
}

// StatusReport is the daemon's state.
type StatusReport struct {
	DaemonVersion  string
	Mode           Mode
	UptimeS        uint64
	Loaded         *LoadedModel
	QueueDepth     uint32 // waiting jobs, not counting the running ones
	Draining       bool
	Worker         WorkerState
	WorkerRestarts uint32
	Sandbox        string // one-line summary of the worker's confinement
	// Device is where the worker runs models ("cpu", "cuda:N"); nil until
	// a worker has started. Added in protocol version 2.
	Device *string
	// WorkerError is why the last worker start failed, until one succeeds
	// (admin connections only). Added in protocol version 2.
	WorkerError *string
	// WorkerMemory is the worker process's memory; nil while none runs.
	// Added in protocol version 2.
	WorkerMemory *WorkerMemory
	// Workers is every worker of the pool ([worker] count or devices), in
	// index order; the Worker, WorkerRestarts, Sandbox, Device, Loaded and
	// WorkerMemory fields above repeat worker 0. Added in protocol
	// version 2.
	Workers []WorkerReport
}

// WorkerReport is one worker of the pool, as Status reports it.
type WorkerReport struct {
	Index    uint32 // JobInfo.Worker and the audit log name workers by it
	Device   string // "cpu" or "cuda:N": what it reported, else its configured device
	State    WorkerState
	Restarts uint32       // starts after its first
	Loaded   *LoadedModel // the model it holds, if any
	JobID    *uint64      // the job it runs (or loads a model for), if any
	Loads    uint64       // model loads since the daemon started
	Memory   *WorkerMemory
	Sandbox  string
}

// WorkerMemory is a process's memory as the kernel counts it.
type WorkerMemory struct {
	ResidentBytes uint64 // VmRSS
	PeakBytes     uint64 // VmHWM
}

// JobInfo is one job as listed by Jobs or AllJobs.
type JobInfo struct {
	JobID         uint64
	OwnerUID      uint32
	Tag           *string
	ModelID       string
	State         JobState
	Position      *uint32 // set while queued; 0 = next
	SubmittedSAgo uint64
	// Added in protocol version 2: steps done and in all (0 of 0 before the
	// first step), where it runs or ran, its run time in ms (nil before it
	// started), and for JobFailed what its caller received.
	Step   uint32
	Total  uint32
	Device *string
	RunMs  *uint64
	Error  DaemonError
	// Worker is the index of the worker it runs or ran on
	// (WorkerReport.Index); nil while queued or when it never reached a
	// worker. Added in protocol version 2.
	Worker *uint32
}

// ChannelStatsReport holds the broker↔worker shared-memory counters:
// worker 0's in KeyGeneration and Segments, every worker's in Workers.
type ChannelStatsReport struct {
	KeyGeneration uint64
	Segments      []SegmentStats
	// Workers is each worker's own channel (own keys and segments), in
	// index order. Added in protocol version 2.
	Workers []WorkerChannelStats
}

// WorkerChannelStats is one worker's channel counters.
type WorkerChannelStats struct {
	Worker        uint32 // WorkerReport.Index
	KeyGeneration uint64 // increases at every key rotation and start of this worker
	Segments      []SegmentStats
}

// SegmentStats are the counters of one segment.
type SegmentStats struct {
	Direction       ChannelDirection
	Slots           uint32
	SlotSize        uint32
	WriteSeq        uint64
	ReadSeq         uint64
	CRCFailures     uint64
	TagFailures     uint64
	ReplaysRejected uint64
}

// Event is one frame of a Generate stream: *Queued, *Position, *Started,
// *Progress, *Preview, *Image or *Finished. A stream that fails ends with an error
// instead of *Finished (see Generation.Next).
type Event interface {
	// Job is the id the broker assigned to the job.
	Job() uint64
	isEvent()
}

// Queued comes exactly once, first: the job was admitted.
type Queued struct {
	JobID    uint64
	Position uint32 // jobs to be served before this one; 0 = next
}

// Position comes when the job moves up the queue.
type Position struct {
	JobID    uint64
	Position uint32
}

// Started comes once, when the worker begins the job.
type Started struct {
	JobID uint64
	Seed  uint64 // seed of image 0 (the broker's choice when none was sent)
}

// Progress reports Step (1-based) of Total denoising steps.
type Progress struct {
	JobID uint64
	Step  uint32
	Total uint32
}

// Image is one finished image, PNG-encoded.
type Image struct {
	JobID  uint64
	Index  uint32
	Seed   uint64
	Width  uint32
	Height uint32
	PNG    []byte
}

// Finished comes once, last, after every image.
type Finished struct {
	JobID uint64
}

// Preview is a small approximate look at image Index after Step of its
// Total denoising steps, PNG-encoded, at most limits.preview_max_size
// pixels on its longer edge. Only with GenerateRequest.PreviewEvery > 0:
// one after every step of each image that is a multiple of it, before the
// images. The broker drops previews a caller reads too slowly (never
// images). Added in protocol version 2.
type Preview struct {
	JobID  uint64
	Index  uint32
	Step   uint32
	Total  uint32
	Width  uint32
	Height uint32
	PNG    []byte
}

func (e *Queued) Job() uint64   { return e.JobID }
func (e *Position) Job() uint64 { return e.JobID }
func (e *Started) Job() uint64  { return e.JobID }
func (e *Progress) Job() uint64 { return e.JobID }
func (e *Image) Job() uint64    { return e.JobID }
func (e *Finished) Job() uint64 { return e.JobID }
func (e *Preview) Job() uint64  { return e.JobID }
func (*Queued) isEvent()        {}
func (*Position) isEvent()      {}
func (*Started) isEvent()       {}
func (*Progress) isEvent()      {}
func (*Image) isEvent()         {}
func (*Finished) isEvent()      {}
func (*Preview) isEvent()       {}
