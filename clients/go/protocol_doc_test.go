package weave

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"os"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// The hex examples of docs/PROTOCOL.md, read from the document itself, so
// this test and common/tests/protocol_doc.rs pin the same bytes.

const protocolDoc = "../../docs/PROTOCOL.md"

// docExamples returns every ```hex example=NAME block, decoded.
func docExamples(t testing.TB) map[string][]byte {
	t.Helper()
	text, err := os.ReadFile(protocolDoc)
	if err != nil {
		t.Fatalf("read %s: %v", protocolDoc, err)
	}
	const marker = "```hex example="
	out := map[string][]byte{}
	var name string
	var frame []byte
	in := false
	sc := bufio.NewScanner(bytes.NewReader(text))
	for line := 1; sc.Scan(); line++ {
		l := sc.Text()
		switch {
		case !in && strings.HasPrefix(l, marker):
			name = strings.TrimSpace(strings.TrimPrefix(l, marker))
			frame = nil
			in = true
		case in && strings.TrimSpace(l) == "```":
			if _, dup := out[name]; dup {
				t.Fatalf("%s:%d: example %q appears twice", protocolDoc, line, name)
			}
			out[name] = frame
			in = false
		case in:
			code, _, _ := strings.Cut(l, "#")
			for _, tok := range strings.Fields(code) {
				b, err := hex.DecodeString(tok)
				if err != nil || len(b) != 1 {
					t.Fatalf("%s:%d: %q is not one hex byte", protocolDoc, line, tok)
				}
				frame = append(frame, b[0])
			}
		}
	}
	if in {
		t.Fatalf("%s: example %q is not closed", protocolDoc, name)
	}
	return out
}

// The tiny PNG of the image example (a real 1×1 PNG).
var tinyPNG = []byte{
	0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
	0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90, 0x77, 0x53,
	0xde, 0x00, 0x00, 0x00, 0x0c, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0xf8, 0xdf, 0xc0, 0x00,
	0x00, 0x04, 0x01, 0x01, 0x80, 0xfb, 0xd7, 0xcb, 0xf1, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e,
	0x44, 0xae, 0x42, 0x60, 0x82,
}

func defaultBounds() ParamBounds {
	return ParamBounds{
		MinWidth: 32, MaxWidth: 1024, MinHeight: 32, MaxHeight: 1024, MaxSteps: 150,
		MinGuidance: 0, MaxGuidance: 30, MaxPromptLen: 2000, MaxNegativePromptLen: 2000,
		MaxBatch: 4, MaxTagLen: 64,
	}
}

// The values the document's examples encode (the same as the Rust test's).
func expectedRequests() map[string]*request {
	sd15 := "sd15"
	return map[string]*request{
		"request/hello":       {kind: reqHello, version: 2, clientName: "weave-web"},
		"request/list_models": {kind: reqListModels},
		"request/status":      {kind: reqStatus},
		"request/generate": {kind: reqGenerate, generate: GenerateRequest{
			ModelID: sd15, Prompt: "a red fox", NegativePrompt: "blurry",
			Width: Ptr[uint32](512), Height: Ptr[uint32](768), Steps: Ptr[uint32](30),
			Guidance: Ptr[float32](7.5), Seed: Ptr[uint64](1234),
			Scheduler: Ptr(SchedulerDPMPP2MKarras), Batch: 2, Tag: Ptr("u-42"),
		}},
		"request/generate_model_defaults": {kind: reqGenerate, generate: GenerateRequest{
			ModelID: sd15, Prompt: "a red fox", Batch: 1, UseModelNegative: true,
		}},
		"request/generate_img2img": {kind: reqGenerate, generate: GenerateRequest{
			ModelID: sd15, Prompt: "a red fox", Width: Ptr[uint32](1), Height: Ptr[uint32](1), Batch: 1,
			UseModelNegative: true, InitImage: tinyPNG, Strength: Ptr[float32](0.5),
		}},
		"request/cancel":           {kind: reqCancel, jobID: 300},
		"request/jobs":             {kind: reqJobs},
		"request/load":             {kind: reqLoad, modelID: sd15},
		"request/unload":           {kind: reqUnload},
		"request/pin":              {kind: reqPin, modelID: sd15},
		"request/unpin":            {kind: reqUnpin, modelID: sd15},
		"request/drain":            {kind: reqDrain},
		"request/resume":           {kind: reqResume},
		"request/rotate_keys":      {kind: reqRotateKeys},
		"request/channel_stats":    {kind: reqChannelStats},
		"request/all_jobs":         {kind: reqAllJobs},
		"request/quarantine_clear": {kind: reqQuarantineClear, modelID: sd15},
	}
}

func expectedResponses() map[string]*response {
	out := map[string]*response{
		"response/hello": {kind: respHello, hello: ServerInfo{Version: 2, ServerVersion: "0.1.0", Role: RoleClient, Mode: ModeSystem}},
		"response/models": {kind: respModels, models: []ModelInfo{{
			ID: "sd15", Kind: "sd1",
			Defaults:  GenerationDefaults{Width: 512, Height: 512, Steps: 25, Guidance: 7.5, Scheduler: SchedulerDPMPP2MKarras},
			Bounds:    defaultBounds(),
			Available: false, Reason: Ptr("path /m/sd15 does not exist"),
		}}},
		"response/status": {kind: respStatus, status: StatusReport{
			DaemonVersion: "0.1.0", Mode: ModeUser, UptimeS: 3600,
			Loaded:     &LoadedModel{ModelID: "sd15", LoadedForS: 600, IdleForS: 12, MemoryBytes: 2147483648},
			QueueDepth: 0, Worker: WorkerReady, Sandbox: "landlock+seccomp", Device: Ptr("cuda:0"),
			WorkerMemory: &WorkerMemory{ResidentBytes: 1073741824, PeakBytes: 2147483648},
			Workers: []WorkerReport{{
				Index: 0, Device: "cuda:0", State: WorkerReady,
				Loaded: &LoadedModel{ModelID: "sd15", LoadedForS: 600, IdleForS: 12, MemoryBytes: 2147483648},
				Loads:  1, Memory: &WorkerMemory{ResidentBytes: 1073741824, PeakBytes: 2147483648},
				Sandbox: "landlock+seccomp",
			}, {
				Index: 1, Device: "cuda:1", State: WorkerReady, Restarts: 1,
				Loaded: &LoadedModel{ModelID: "sd15", LoadedForS: 30, IdleForS: 0, MemoryBytes: 2147483648},
				JobID:  Ptr[uint64](7), Loads: 2,
				Memory:  &WorkerMemory{ResidentBytes: 1258291200, PeakBytes: 2147483648},
				Sandbox: "landlock+seccomp",
			}},
		}},
		"response/queued":   {kind: respQueued, event: &Queued{JobID: 7, Position: 2}},
		"response/position": {kind: respPosition, event: &Position{JobID: 7, Position: 0}},
		"response/started":  {kind: respStarted, event: &Started{JobID: 7, Seed: 1234}},
		"response/progress": {kind: respProgress, event: &Progress{JobID: 7, Step: 1, Total: 30}},
		"response/image":    {kind: respImage, event: &Image{JobID: 7, Index: 0, Seed: 1234, Width: 1, Height: 1, PNG: tinyPNG}},
		"response/finished": {kind: respFinished, event: &Finished{JobID: 7}},
		"response/preview":  {kind: respPreview, event: &Preview{JobID: 7, Index: 0, Step: 2, Total: 6, Width: 1, Height: 1, PNG: tinyPNG}},
		"response/jobs": {kind: respJobs, jobs: []JobInfo{{
			JobID: 7, OwnerUID: 1000, Tag: Ptr("u-42"), ModelID: "sd15", State: JobRunning,
			SubmittedSAgo: 3, Step: 12, Total: 30, Device: Ptr("cuda:1"), RunMs: Ptr[uint64](2500),
			Worker: Ptr[uint32](1),
		}, {
			JobID: 6, OwnerUID: 1000, ModelID: "sd15", State: JobFailed,
			SubmittedSAgo: 40, Error: &TimedOutError{},
		}}},
		"response/channel_stats": {kind: respChannelStats, channel: ChannelStatsReport{
			KeyGeneration: 3, Segments: worker0Segments(),
			Workers: []WorkerChannelStats{
				{Worker: 0, KeyGeneration: 3, Segments: worker0Segments()},
				{Worker: 1, KeyGeneration: 1, Segments: []SegmentStats{
					{Direction: BrokerToWorker, Slots: 8, SlotSize: 65536, WriteSeq: 12, ReadSeq: 12},
					{Direction: WorkerToBroker, Slots: 8, SlotSize: 4194304, WriteSeq: 40, ReadSeq: 40},
				}},
			},
		}},
		"response/ok": {kind: respOK},
	}
	for _, err := range everyDaemonError() {
		out["response/error/"+err.Code().String()] = &response{kind: respError, err: err}
	}
	return out
}

// The segments of worker 0 in the channel_stats example.
func worker0Segments() []SegmentStats {
	return []SegmentStats{
		{Direction: BrokerToWorker, Slots: 8, SlotSize: 65536, WriteSeq: 150, ReadSeq: 150},
		{Direction: WorkerToBroker, Slots: 8, SlotSize: 4194304, WriteSeq: 420, ReadSeq: 419, CRCFailures: 1, ReplaysRejected: 2},
	}
}

// One error of every code, with the fields of the document's examples.
func everyDaemonError() []DaemonError {
	return []DaemonError{
		&InvalidParameterError{Field: "width", Allowed: "a multiple of 8 from 32 to 1024"},
		&UnknownModelError{ModelID: "sdxl"},
		&BusyError{RetryAfterMs: 2000},
		&RateLimitedError{RetryAfterMs: 500},
		&CancelledError{},
		&TimedOutError{},
		&WorkerCrashedError{},
		&NotPermittedError{Verb: "load"},
		&ModelQuarantinedError{},
		&ProtocolError{Reason: "expected Hello"},
		&ShuttingDownError{},
		&InternalError{},
		&ModelUnavailableError{},
	}
}

func TestEveryDocExampleIsCovered(t *testing.T) {
	doc := docExamples(t)
	want := map[string]bool{}
	for name := range expectedRequests() {
		want[name] = true
	}
	for name := range expectedResponses() {
		want[name] = true
	}
	var missing, extra []string
	for name := range want {
		if _, ok := doc[name]; !ok {
			missing = append(missing, name)
		}
	}
	for name := range doc {
		if !want[name] {
			extra = append(extra, name)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 || len(extra) > 0 {
		t.Fatalf("docs/PROTOCOL.md and this test disagree: missing from the doc %v, unknown to this test %v", missing, extra)
	}
	// Every request (16), every response but Error (12), one Error per
	// code (12), generate_model_defaults and generate_img2img.
	if len(doc) != int(requestKindCount)+int(responseKindCount)-1+int(errorCodeCount)+2 {
		t.Fatalf("expected 42 examples, the document has %d", len(doc))
	}
}

func TestRequestExamplesEncodeAndDecode(t *testing.T) {
	doc := docExamples(t)
	for name, req := range expectedRequests() {
		frame, err := frameRequest(req)
		if err != nil {
			t.Fatalf("%s: encode: %v", name, err)
		}
		if !bytes.Equal(frame, doc[name]) {
			t.Errorf("%s: encoded\n  % x\nthe document has\n  % x", name, frame, doc[name])
			continue
		}
		got, err := decodeRequest(doc[name][4:])
		if err != nil {
			t.Errorf("%s: decode: %v", name, err)
			continue
		}
		if !reflect.DeepEqual(got, req) {
			t.Errorf("%s: decoded %+v, want %+v", name, got, req)
		}
	}
}

func TestResponseExamplesDecodeAndEncode(t *testing.T) {
	doc := docExamples(t)
	for name, want := range expectedResponses() {
		frame := doc[name]
		body, err := readFrame(bytes.NewReader(frame), DefaultMaxResponseFrame)
		if err != nil {
			t.Fatalf("%s: frame: %v", name, err)
		}
		got, err := decodeResponse(body)
		if err != nil {
			t.Errorf("%s: decode: %v", name, err)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: decoded %+v, want %+v", name, got, want)
		}
		if enc := frameResponse(want); !bytes.Equal(enc, frame) {
			t.Errorf("%s: encoded\n  % x\nthe document has\n  % x", name, enc, frame)
		}
	}
}
