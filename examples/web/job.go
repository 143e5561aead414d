package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"sync"

	"weave-compute.local/weave"
)

// event is one server-sent event for a job's page.
type event struct {
	Name string // status, progress, image, end
	Data any
}

type imageInfo struct {
	Index  uint32 `json:"index"`
	URL    string `json:"url"`
	Width  uint32 `json:"width"`
	Height uint32 `json:"height"`
	Seed   uint64 `json:"seed"`
}

// job is one generation as this app tracks it. Its id is random and only
// used in URLs; the broker's job id stays on the server.
type job struct {
	id     string
	tag    string
	prompt string
	width  uint32
	height uint32
	cancel context.CancelFunc

	mu       sync.Mutex
	daemonID uint64 // 0 until Queued
	events   []event
	images   [][]byte
	status   string
	failed   bool
	done     bool
	changed  chan struct{} // closed and replaced on every change
}

func newJob(tag, prompt string, width, height uint32) *job {
	var raw [12]byte
	rand.Read(raw[:])
	return &job{id: hex.EncodeToString(raw[:]), tag: tag, prompt: prompt, width: width, height: height,
		status: "sent to the image service", changed: make(chan struct{})}
}

func (j *job) publishLocked(e event) {
	j.events = append(j.events, e)
	close(j.changed)
	j.changed = make(chan struct{})
}

func (j *job) setStatus(text string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.status = text
	j.publishLocked(event{"status", map[string]string{"text": text}})
}

func (j *job) progress(step, total uint32) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.publishLocked(event{"progress", map[string]uint32{"step": step, "total": total}})
}

func (j *job) addImage(img *weave.Image) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.images = append(j.images, img.PNG)
	j.publishLocked(event{"image", imageInfo{
		Index: uint32(len(j.images) - 1), URL: "/jobs/" + j.id + "/images/" + itoa(len(j.images)-1),
		Width: img.Width, Height: img.Height, Seed: img.Seed,
	}})
}

// end finishes the job with a message in words (an error when failed).
func (j *job) end(text string, failed bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.done {
		return
	}
	j.done, j.failed, j.status = true, failed, text
	j.publishLocked(event{"end", map[string]any{"text": text, "error": failed}})
}

func (j *job) finished() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.done
}

// abandon stops the stream (the broker cancels the job when the
// connection closes).
func (j *job) abandon() {
	if j.cancel != nil {
		j.cancel()
	}
}

// since returns the events after the first n, and a channel closed at the
// next change.
func (j *job) since(n int) ([]event, <-chan struct{}, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return append([]event(nil), j.events[n:]...), j.changed, j.done
}

type jobView struct {
	ID, Prompt, Status string
	Failed, Done       bool
	Images             []imageInfo
}

func (j *job) view() jobView {
	j.mu.Lock()
	defer j.mu.Unlock()
	v := jobView{ID: j.id, Prompt: j.prompt, Status: j.status, Failed: j.failed, Done: j.done}
	for _, e := range j.events {
		if info, ok := e.Data.(imageInfo); ok {
			v.Images = append(v.Images, info)
		}
	}
	return v
}

func (j *job) image(i int) ([]byte, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if i < 0 || i >= len(j.images) {
		return nil, false
	}
	return j.images[i], true
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return "{}"
	}
	return string(b)
}
