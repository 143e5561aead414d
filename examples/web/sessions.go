package main

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"sync"
	"time"
)

// A browser is known by a random cookie. Its protocol tag (the end-user
// label the broker records and lists) is derived from the cookie with a
// key only this process knows, so the tag in the broker's audit log or Jobs
// list cannot be turned back into a cookie.

const (
	cookieName = "weave_session"
	// Kept per browser: older jobs are forgotten (their images with them).
	jobsPerSession = 6
	// Generations one browser may run at once.
	activePerSession = 2
	// Browsers remembered; the longest idle is forgotten first.
	maxSessions = 1000
)

type session struct {
	tag      string
	jobs     []*job // newest last
	lastSeen time.Time
}

type sessions struct {
	key [32]byte
	mu  sync.Mutex
	by  map[string]*session // by cookie value
}

func newSessions() *sessions {
	s := &sessions{by: map[string]*session{}}
	rand.Read(s.key[:])
	return s
}

func (s *sessions) tagFor(cookie string) string {
	m := hmac.New(sha256.New, s.key[:])
	m.Write([]byte(cookie))
	return "web-" + hex.EncodeToString(m.Sum(nil))[:20]
}

// get returns the browser's session, creating it (and setting the cookie)
// when the request has none or an unknown one.
func (s *sessions) get(w http.ResponseWriter, r *http.Request) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, err := r.Cookie(cookieName); err == nil && len(c.Value) == 32 {
		if sess, ok := s.by[c.Value]; ok {
			sess.lastSeen = time.Now()
			return sess
		}
	}
	var raw [16]byte
	rand.Read(raw[:])
	value := hex.EncodeToString(raw[:])
	if len(s.by) >= maxSessions {
		s.evictOldestLocked()
	}
	sess := &session{tag: s.tagFor(value), lastSeen: time.Now()}
	s.by[value] = sess
	http.SetCookie(w, &http.Cookie{
		Name: cookieName, Value: value, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
	})
	return sess
}

func (s *sessions) evictOldestLocked() {
	var oldest string
	var at time.Time
	for k, v := range s.by {
		if oldest == "" || v.lastSeen.Before(at) {
			oldest, at = k, v.lastSeen
		}
	}
	if sess := s.by[oldest]; sess != nil {
		for _, j := range sess.jobs {
			j.abandon()
		}
	}
	delete(s.by, oldest)
}

// add records a new job for the session, forgetting the oldest finished
// one beyond jobsPerSession. It refuses when activePerSession jobs run.
func (s *sessions) add(sess *session, j *job) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	active := 0
	for _, old := range sess.jobs {
		if !old.finished() {
			active++
		}
	}
	if active >= activePerSession {
		return false
	}
	sess.jobs = append(sess.jobs, j)
	for len(sess.jobs) > jobsPerSession {
		drop := -1
		for i, old := range sess.jobs {
			if old.finished() {
				drop = i
				break
			}
		}
		if drop < 0 {
			break
		}
		sess.jobs = append(sess.jobs[:drop], sess.jobs[drop+1:]...)
	}
	return true
}

// find returns the session's job with this id.
func (s *sessions) find(sess *session, id string) *job {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, j := range sess.jobs {
		if j.id == id {
			return j
		}
	}
	return nil
}

func (s *sessions) list(sess *session) []*job {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*job(nil), sess.jobs...)
}
