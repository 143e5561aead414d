package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"image/png"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"weave-compute.local/weave"
	"weave-compute.local/weave/weavetest"
)

// Every test here runs the app against a real broker and sandboxed worker
// serving models/digits, over real HTTP on the loopback interface.

func startApp(t *testing.T, b *weavetest.Broker) *httptest.Server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	app, err := NewApp(ctx, b.Socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = NewServer(app)
	srv.Start()
	t.Cleanup(func() { cancel(); srv.Close() })
	return srv
}

// visitor is one browser without a browser: its own cookie jar.
type visitor struct {
	t    *testing.T
	base string
	c    *http.Client
}

func newVisitor(t *testing.T, srv *httptest.Server) *visitor {
	jar, _ := cookiejar.New(nil)
	return &visitor{t: t, base: srv.URL, c: &http.Client{Jar: jar, Timeout: 30 * time.Second}}
}

func (v *visitor) get(path string) (int, string) {
	v.t.Helper()
	resp, err := v.c.Get(v.base + path)
	if err != nil {
		v.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// post sends a form; it returns the status, the final path and the body.
func (v *visitor) post(path string, form url.Values) (int, string, string) {
	v.t.Helper()
	req, _ := http.NewRequest("POST", v.base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", v.base)
	resp, err := v.c.Do(req)
	if err != nil {
		v.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Request.URL.Path, string(body)
}

// waitPage polls a page until it contains want.
func (v *visitor) waitPage(path, want string, timeout time.Duration) string {
	v.t.Helper()
	end := time.Now().Add(timeout)
	for {
		_, body := v.get(path)
		if strings.Contains(body, want) {
			return body
		}
		if time.Now().After(end) {
			v.t.Fatalf("%s never showed %q; last:\n%s", path, want, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func form(prompt string, steps string) url.Values {
	return url.Values{"model": {"digits"}, "prompt": {prompt}, "steps": {steps}, "seed": {"3"}}
}

func adminJobs(t *testing.T, b *weavetest.Broker) []weave.JobInfo {
	t.Helper()
	c, err := weave.Dial(context.Background(), b.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	jobs, err := c.Jobs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return jobs
}

var jobPath = regexp.MustCompile(`^/jobs/[0-9a-f]{24}$`)

func TestBrowserTypesClicksAndGetsThePNG(t *testing.T) {
	b := weavetest.Start(t, weavetest.Config{Steps: 4})
	srv := startApp(t, b)
	br := startBrowser(t)
	br.navigate(srv.URL + "/")
	br.typeInto("prompt", "a handwritten seven")
	br.typeInto("width", "32")
	br.typeInto("height", "32")
	from := br.eventCount()
	br.click("generate")
	br.waitEvent("Page.loadEventFired", from, 30*time.Second)
	var img struct {
		W, H int
		Path string
	}
	br.waitFor(`(() => { const i = document.getElementById("image-0");
		return i && i.complete && i.naturalWidth > 0 ? {w: i.naturalWidth, h: i.naturalHeight, path: location.pathname} : null })()`,
		90*time.Second, &img)
	if img.W != 32 || img.H != 32 || !jobPath.MatchString(img.Path) {
		t.Fatalf("image %dx%d on %s", img.W, img.H, img.Path)
	}
	var b64 string
	br.eval(`fetch(document.getElementById("image-0").src).then(r => r.arrayBuffer()).then(b => {
		let s = ""; for (const c of new Uint8Array(b)) s += String.fromCharCode(c); return btoa(s) })`, &b64)
	data, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(data, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("the image is not a PNG: % x", data[:min(16, len(data))])
	}
	cfg, err := png.DecodeConfig(bytes.NewReader(data))
	if err != nil || cfg.Width != 32 || cfg.Height != 32 {
		t.Fatalf("PNG %dx%d (%v), asked for 32x32", cfg.Width, cfg.Height, err)
	}
	if _, err := png.Decode(bytes.NewReader(data)); err != nil {
		t.Fatalf("the PNG does not decode: %v", err)
	}
	var status string
	br.waitFor(`(() => { const s = document.getElementById("status"); return s.className === "done" ? s.textContent : null })()`, 30*time.Second, &status)
	if status != "Done." {
		t.Fatalf("status %q", status)
	}
}

func TestBrowserCancelButtonAndErrorsInWords(t *testing.T) {
	b := weavetest.Start(t, weavetest.Config{Steps: 150})
	srv := startApp(t, b)
	br := startBrowser(t)

	// A width the model's bounds refuse is explained on the form.
	br.navigate(srv.URL + "/")
	br.typeInto("prompt", "a 4")
	br.typeInto("width", "33")
	from := br.eventCount()
	br.click("generate")
	br.waitEvent("Page.loadEventFired", from, 30*time.Second)
	var msg string
	br.eval(`document.getElementById("form-error").textContent`, &msg)
	if msg != "The width must be a multiple of 8 from 32 to 1024." {
		t.Fatalf("form error %q", msg)
	}

	// A long job, cancelled with the button while it runs.
	br.typeInto("width", "")
	from = br.eventCount()
	br.click("generate")
	br.waitEvent("Page.loadEventFired", from, 30*time.Second)
	var step int
	br.waitFor(`(() => { const p = document.getElementById("progress"); return p.value >= 1 ? p.value : null })()`, 60*time.Second, &step)
	// The broker also lists the jobs that ended (its history) after the live ones.
	if jobs := adminJobs(t, b); len(jobs) == 0 || jobs[0].State != weave.JobRunning ||
		(len(jobs) > 1 && jobs[1].State != weave.JobFinished && jobs[1].State != weave.JobFailed) {
		t.Fatalf("daemon jobs while running: %+v", jobs)
	}
	from = br.eventCount()
	br.click("cancel")
	br.waitEvent("Page.loadEventFired", from, 30*time.Second)
	var status string
	br.waitFor(`(() => { const s = document.getElementById("status"); return s.className === "error" ? s.textContent : null })()`, 30*time.Second, &status)
	if status != "Cancelled." {
		t.Fatalf("status after cancel: %q", status)
	}
	// The broker drops the job from its table a moment after the stream's
	// last event.
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		jobs := adminJobs(t, b)
		ended := true
		for _, j := range jobs {
			ended = ended && (j.State == weave.JobFinished || j.State == weave.JobFailed)
		}
		if ended {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the daemon still has jobs after the cancel button: %+v", jobs)
		}
	}
}

func TestEachBrowserSeesOnlyItsOwnJobs(t *testing.T) {
	b := weavetest.Start(t, weavetest.Config{Steps: 150, Limits: "per_client_queue_depth = 2"})
	srv := startApp(t, b)
	alice, bob := newVisitor(t, srv), newVisitor(t, srv)
	alice.get("/")
	bob.get("/")
	status, path, _ := alice.post("/generate", form("alice's 1", "150"))
	if status != http.StatusOK || !jobPath.MatchString(path) {
		t.Fatalf("generate: %d %s", status, path)
	}
	alice.waitPage(path, "", time.Second)
	// The broker sees one uid; the job carries alice's tag.
	var jobs []weave.JobInfo
	for end := time.Now().Add(10 * time.Second); len(jobs) == 0 && time.Now().Before(end); {
		jobs = adminJobs(t, b)
	}
	if len(jobs) != 1 || jobs[0].Tag == nil || !strings.HasPrefix(*jobs[0].Tag, "web-") {
		t.Fatalf("daemon jobs: %+v", jobs)
	}
	aliceTag := *jobs[0].Tag
	// Bob can neither see, nor stream, nor fetch, nor cancel it.
	for _, p := range []string{path, path + "/events", path + "/images/0"} {
		if code, _ := bob.get(p); code != http.StatusNotFound {
			t.Fatalf("bob GET %s: %d", p, code)
		}
	}
	if code, _, _ := bob.post(path+"/cancel", nil); code != http.StatusNotFound {
		t.Fatalf("bob cancel: %d", code)
	}
	_, bobIndex := bob.get("/")
	_, aliceIndex := alice.get("/")
	// The broker's list (one uid) filtered by tag: alice's page shows her
	// job, bob's shows none.
	if strings.Contains(bobIndex, `id="daemon-jobs"`) || !strings.Contains(aliceIndex, `<ul id="daemon-jobs"><li>digits: `) {
		t.Fatalf("index pages: alice lists %v, bob lists %v",
			strings.Contains(aliceIndex, `id="daemon-jobs"`), strings.Contains(bobIndex, `id="daemon-jobs"`))
	}
	// Bob's own job gets a different tag.
	_, bobPath, _ := bob.post("/generate", form("bob's 1", "2"))
	var bobTag string
	for end := time.Now().Add(10 * time.Second); bobTag == "" && time.Now().Before(end); {
		for _, j := range adminJobs(t, b) {
			if j.Tag != nil && *j.Tag != aliceTag {
				bobTag = *j.Tag
			}
		}
	}
	if bobTag == "" || !strings.HasPrefix(bobTag, "web-") {
		t.Fatalf("bob's job has no tag of its own (alice: %s)", aliceTag)
	}
	// Alice cancels hers; bob's runs to the end.
	if code, _, body := alice.post(path+"/cancel", nil); code != http.StatusOK || !strings.Contains(body, "Cancel") {
		t.Fatalf("alice cancel: %d", code)
	}
	alice.waitPage(path, "Cancelled.", 30*time.Second)
	page := bob.waitPage(bobPath, "Done.", 60*time.Second)
	if !strings.Contains(page, `id="image-0"`) {
		t.Fatalf("bob's finished page has no image:\n%s", page)
	}
}

func TestInputsAreBoundedAndDaemonErrorsShownInWords(t *testing.T) {
	b := weavetest.Start(t, weavetest.Config{Steps: 150, Limits: "per_client_queue_depth = 1"})
	srv := startApp(t, b)
	v := newVisitor(t, srv)
	v.get("/")
	cases := []struct {
		form url.Values
		want string
	}{
		{url.Values{"model": {"../../models/digits"}, "prompt": {"x"}}, "The model must be one of the listed models."},
		{url.Values{"model": {"digits"}, "prompt": {strings.Repeat("x", 2001)}}, "The prompt must be at most 2000 bytes (it has 2001)."},
		{url.Values{"model": {"digits"}, "prompt": {"a\x1b[31m"}}, "The prompt must be text without control characters"},
		{url.Values{"model": {"digits"}, "steps": {"151"}}, "The steps must be a whole number from 1 to 150."},
		{url.Values{"model": {"digits"}, "guidance": {"NaN"}}, "The guidance must be a number from 0 to 30."},
		{url.Values{"model": {"digits"}, "batch": {"9"}}, "The number of images must be a whole number from 1 to 4."},
		{url.Values{"model": {"digits"}, "scheduler": {"pickle"}}, "The scheduler must be one of the listed schedulers."},
	}
	for _, c := range cases {
		code, _, body := v.post("/generate", c.form)
		if code != http.StatusUnprocessableEntity || !strings.Contains(body, c.want) {
			t.Fatalf("form %v: %d, want the message %q in:\n%s", c.form, code, c.want, body)
		}
	}
	if len(adminJobs(t, b)) != 0 {
		t.Fatal("a refused form reached the daemon")
	}
	// A textarea's CRLF line breaks are accepted (sent as LF).
	if code, path, _ := v.post("/generate", url.Values{"model": {"digits"}, "prompt": {"two\r\nlines"}, "steps": {"150"}}); code != http.StatusOK || !jobPath.MatchString(path) {
		t.Fatalf("CRLF prompt: %d %s", code, path)
	}
	// The daemon's own refusal (this uid's one queue slot is taken) is
	// shown in words on the second job's page.
	_, second, _ := v.post("/generate", form("another", "2"))
	page := v.waitPage(second, "queue is full", 30*time.Second)
	if !strings.Contains(page, "The image service says: the broker&#39;s queue is full; retry in") {
		t.Fatalf("busy page:\n%s", page)
	}
	// Too large a form, and a post from another origin, are refused.
	big := url.Values{"prompt": {strings.Repeat("x", 40<<10)}}
	if code, _, _ := v.post("/generate", big); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("oversized form: %d", code)
	}
	req, _ := http.NewRequest("POST", srv.URL+"/generate", strings.NewReader(form("x", "2").Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "http://evil.example")
	resp, err := v.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-origin post: %d", resp.StatusCode)
	}
	// The broker being gone is a sentence, not a socket path.
	b2 := weavetest.Start(t, weavetest.Config{})
	app, _ := NewApp(context.Background(), b2.Dir+"/nothing/weave.sock")
	rec := httptest.NewRecorder()
	app.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	if !strings.Contains(rec.Body.String(), "The image service is not available right now") || strings.Contains(rec.Body.String(), b2.Dir) {
		t.Fatalf("no broker: %s", rec.Body.String())
	}
}
