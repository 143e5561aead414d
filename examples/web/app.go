package main

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io"
	"log"
	"net/http"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"weave-compute.local/weave"
)

//go:embed templates/*.html static/*
var assets embed.FS

const (
	// The largest form accepted: prompts at the default bounds and the
	// small fields fit several times over.
	maxFormBytes = 32 << 10
	// Generations the whole app streams at once (each holds one broker
	// connection).
	maxActive = 32
	// A job (queue wait included) ends after this.
	jobDeadline = 15 * time.Minute
)

// App is the web application: sessions, jobs and the broker's socket.
type App struct {
	ctx      context.Context // ends every stream when the app stops
	socket   string
	dialer   weave.Dialer
	sessions *sessions
	tmpl     *template.Template
	active   atomic.Int32
}

// NewApp prepares the app; it talks to the broker only per request.
func NewApp(ctx context.Context, socket string) (*App, error) {
	tmpl, err := template.ParseFS(assets, "templates/*.html")
	if err != nil {
		return nil, err
	}
	return &App{ctx: ctx, socket: socket, dialer: weave.Dialer{ClientName: "weave-web"},
		sessions: newSessions(), tmpl: tmpl}, nil
}

// Handler routes the app's pages.
func (a *App) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", a.index)
	mux.HandleFunc("POST /generate", a.generate)
	mux.HandleFunc("GET /jobs/{id}", a.jobPage)
	mux.HandleFunc("GET /jobs/{id}/events", a.events)
	mux.HandleFunc("GET /jobs/{id}/images/{n}", a.image)
	mux.HandleFunc("POST /jobs/{id}/cancel", a.cancel)
	mux.Handle("GET /static/", http.FileServerFS(assets))
	return securityHeaders(mux)
}

// securityHeaders: no inline scripts or foreign origins, no framing, and
// POSTs only from this app's own pages (SameSite cookies cover the rest).
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self'; frame-ancestors 'none'; form-action 'self'")
		h.Set("X-Content-Type-Options", "nosniff")
		// same-origin, not no-referrer: with no-referrer browsers send
		// "Origin: null" on form posts, which the check below refuses.
		h.Set("Referrer-Policy", "same-origin")
		if r.Method == http.MethodPost {
			if origin := r.Header.Get("Origin"); origin != "" && origin != "http://"+r.Host && origin != "https://"+r.Host {
				http.Error(w, "cross-site form posts are refused", http.StatusForbidden)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// dial opens a broker connection for one request or stream.
func (a *App) dial(ctx context.Context) (*weave.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return a.dialer.Dial(ctx, a.socket)
}

// userMessage is what the browser sees for err: the daemon's typed errors
// in words; for anything else (the socket, identity checks, I/O) a fixed
// sentence, the details only in this server's log.
func userMessage(err error) string {
	var daemon weave.DaemonError
	var form *formError
	switch {
	case errors.As(err, &form):
		return "The " + form.Field + " must be " + form.Message + "."
	case errors.As(err, &daemon):
		return "The image service says: " + daemon.Error() + "."
	case errors.Is(err, context.DeadlineExceeded):
		return "The job took too long and was stopped; try fewer steps or a smaller image."
	default:
		log.Printf("broker: %v", err)
		return "The image service is not available right now; try again in a minute."
	}
}

type indexPage struct {
	Models     []weave.ModelInfo
	Schedulers []weave.Scheduler
	Form       formValues
	Error      string
	Jobs       []jobView
	Daemon     []weave.JobInfo // this browser's queued and running jobs, from the broker
	DaemonErr  string
}

func (a *App) index(w http.ResponseWriter, r *http.Request) {
	sess := a.sessions.get(w, r)
	a.renderIndex(w, r, sess, formValues{}, "", http.StatusOK)
}

func (a *App) renderIndex(w http.ResponseWriter, r *http.Request, sess *session, form formValues, msg string, status int) {
	page := indexPage{Schedulers: weave.Schedulers(), Form: form, Error: msg}
	for _, j := range a.sessions.list(sess) {
		page.Jobs = append(page.Jobs, j.view())
	}
	c, err := a.dial(r.Context())
	if err == nil {
		defer c.Close()
		page.Models, err = c.ListModels(r.Context())
	}
	if err == nil {
		var all []weave.JobInfo
		all, err = c.Jobs(r.Context())
		// The broker lists every job of this app's uid; each browser
		// sees only those carrying its own tag.
		for _, info := range all {
			if info.Tag != nil && *info.Tag == sess.tag {
				page.Daemon = append(page.Daemon, info)
			}
		}
	}
	if err != nil {
		page.DaemonErr = userMessage(err)
	}
	if page.Form.Model == "" && len(page.Models) > 0 {
		page.Form.Model = page.Models[0].ID
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := a.tmpl.ExecuteTemplate(w, "index.html", page); err != nil {
		log.Printf("render: %v", err)
	}
}

func (a *App) generate(w http.ResponseWriter, r *http.Request) {
	sess := a.sessions.get(w, r)
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "the form is too large or malformed", http.StatusRequestEntityTooLarge)
		return
	}
	form := readForm(r.PostForm)
	c, err := a.dial(r.Context())
	if err != nil {
		a.renderIndex(w, r, sess, form, userMessage(err), http.StatusServiceUnavailable)
		return
	}
	models, err := c.ListModels(r.Context())
	c.Close()
	if err != nil {
		a.renderIndex(w, r, sess, form, userMessage(err), http.StatusServiceUnavailable)
		return
	}
	req, model, err := form.request(models, sess.tag)
	if err != nil {
		a.renderIndex(w, r, sess, form, userMessage(err), http.StatusUnprocessableEntity)
		return
	}
	width, height := model.Defaults.Width, model.Defaults.Height
	if req.Width != nil {
		width = *req.Width
	}
	if req.Height != nil {
		height = *req.Height
	}
	j := newJob(sess.tag, req.Prompt, width, height)
	if a.active.Add(1) > maxActive {
		a.active.Add(-1)
		a.renderIndex(w, r, sess, form, "The server is running as many generations as it can; try again in a minute.", http.StatusServiceUnavailable)
		return
	}
	if !a.sessions.add(sess, j) {
		a.active.Add(-1)
		a.renderIndex(w, r, sess, form, fmt.Sprintf("You already have %d generations running; wait for one or cancel it.", activePerSession), http.StatusTooManyRequests)
		return
	}
	ctx, cancel := context.WithTimeout(a.ctx, jobDeadline)
	j.cancel = cancel
	go func() {
		defer a.active.Add(-1)
		defer cancel()
		a.run(ctx, j, req)
	}()
	http.Redirect(w, r, "/jobs/"+j.id, http.StatusSeeOther)
}

// run streams one generation into j.
func (a *App) run(ctx context.Context, j *job, req weave.GenerateRequest) {
	c, err := a.dial(ctx)
	if err != nil {
		j.end(userMessage(err), true)
		return
	}
	defer c.Close()
	g, err := c.Generate(ctx, req)
	if err != nil {
		j.end(userMessage(err), true)
		return
	}
	j.mu.Lock()
	j.daemonID = g.JobID()
	j.mu.Unlock()
	for {
		ev, err := g.Next()
		if errors.Is(err, io.EOF) {
			j.end("Done.", false)
			return
		}
		var cancelled *weave.CancelledError
		switch {
		case errors.As(err, &cancelled) || (err != nil && errors.Is(err, context.Canceled)):
			j.end("Cancelled.", true)
			return
		case err != nil:
			j.end(userMessage(err), true)
			return
		}
		switch ev := ev.(type) {
		case *weave.Queued:
			j.setStatus(queueText(ev.Position))
		case *weave.Position:
			j.setStatus(queueText(ev.Position))
		case *weave.Started:
			j.setStatus("Generating (seed " + strconv.FormatUint(ev.Seed, 10) + ")…")
		case *weave.Progress:
			j.progress(ev.Step, ev.Total)
		case *weave.Image:
			j.addImage(ev)
		case *weave.Finished:
		}
	}
}

func queueText(position uint32) string {
	if position == 0 {
		return "Waiting: next in the queue."
	}
	return fmt.Sprintf("Waiting: %d jobs ahead in the queue.", position)
}

// jobOf finds the session's job named in the URL, or answers 404: another
// browser's job ids are not found, not forbidden.
func (a *App) jobOf(w http.ResponseWriter, r *http.Request) (*session, *job) {
	sess := a.sessions.get(w, r)
	j := a.sessions.find(sess, r.PathValue("id"))
	if j == nil {
		http.Error(w, "no such job in this browser's session", http.StatusNotFound)
	}
	return sess, j
}

func (a *App) jobPage(w http.ResponseWriter, r *http.Request) {
	_, j := a.jobOf(w, r)
	if j == nil {
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := a.tmpl.ExecuteTemplate(w, "job.html", j.view()); err != nil {
		log.Printf("render: %v", err)
	}
}

// events streams the job's events as server-sent events: everything so
// far, then each change, until the job ends or the browser leaves.
func (a *App) events(w http.ResponseWriter, r *http.Request) {
	_, j := a.jobOf(w, r)
	if j == nil {
		return
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	sent := 0
	heartbeat := time.NewTicker(15 * time.Second)
	defer heartbeat.Stop()
	for {
		evs, changed, done := j.since(sent)
		rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		for _, e := range evs {
			fmt.Fprintf(w, "event: %s\ndata: %s\n\n", e.Name, mustJSON(e.Data))
		}
		sent += len(evs)
		if err := rc.Flush(); err != nil || done {
			return
		}
		select {
		case <-changed:
		case <-heartbeat.C:
			fmt.Fprint(w, ": still here\n\n")
		case <-r.Context().Done():
			return
		}
	}
}

func (a *App) image(w http.ResponseWriter, r *http.Request) {
	_, j := a.jobOf(w, r)
	if j == nil {
		return
	}
	n, err := strconv.Atoi(r.PathValue("n"))
	png, ok := j.image(n)
	if err != nil || !ok {
		http.Error(w, "no such image", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "image/png")
	w.Header().Set("Content-Disposition", "inline; filename=\"weave-"+j.id+"-"+strconv.Itoa(n)+".png\"")
	w.Write(png)
}

// cancel asks the broker to cancel the job. The broker knows only the
// app's uid, so the app first checks, in the broker's own job list, that
// the job carries this browser's tag.
func (a *App) cancel(w http.ResponseWriter, r *http.Request) {
	sess, j := a.jobOf(w, r)
	if j == nil {
		return
	}
	j.mu.Lock()
	id := j.daemonID
	j.mu.Unlock()
	back := "/jobs/" + url.PathEscape(j.id)
	if id == 0 || j.finished() {
		j.abandon() // not admitted yet: dropping the connection is enough
		http.Redirect(w, r, back, http.StatusSeeOther)
		return
	}
	c, err := a.dial(r.Context())
	if err != nil {
		http.Error(w, userMessage(err), http.StatusServiceUnavailable)
		return
	}
	defer c.Close()
	jobs, err := c.Jobs(r.Context())
	if err != nil {
		http.Error(w, userMessage(err), http.StatusServiceUnavailable)
		return
	}
	for _, info := range jobs {
		if info.JobID == id && info.Tag != nil && *info.Tag == sess.tag {
			if err := c.Cancel(r.Context(), id); err != nil {
				var invalid *weave.InvalidParameterError
				if !errors.As(err, &invalid) { // finished meanwhile: nothing to cancel
					http.Error(w, userMessage(err), http.StatusServiceUnavailable)
					return
				}
			}
		}
	}
	http.Redirect(w, r, back, http.StatusSeeOther)
}
