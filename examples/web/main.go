// Command web is an example web application in front of weave-broker: a
// form for a prompt and parameters, live progress over server-sent events,
// the image, a cancel button, and each browser's jobs kept apart by the
// protocol's end-user tag. It is an example, not a product: there is no
// login, a browser is identified only by a random cookie.
//
//	go run . -listen 127.0.0.1:8080 -socket "$XDG_RUNTIME_DIR/weave/weave.sock"
//
// The browser chooses a model only by id, from the broker's own list, and
// every number is checked against that model's bounds before it is sent;
// no path, file or model file ever comes from the browser.
package main

import (
	"context"
	"errors"
	"flag"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "TCP address to serve HTTP on (loopback by default)")
	socket := flag.String("socket", defaultSocket(), "the broker's Unix socket")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app, err := NewApp(ctx, *socket)
	if err != nil {
		log.Fatal(err)
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("cannot listen on %s: %v", *listen, err)
	}
	log.Printf("serving http://%s/ for the broker at %s", l.Addr(), *socket)
	srv := NewServer(app)
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}

// defaultSocket is the user-mode broker's socket, else the system one.
func defaultSocket() string {
	if dir := os.Getenv("XDG_RUNTIME_DIR"); dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "weave/weave.sock")); err == nil {
			return filepath.Join(dir, "weave/weave.sock")
		}
	}
	return "/run/weave/weave.sock"
}

// NewServer wraps the app's handler with the timeouts a network-facing
// server needs (slow clients cannot hold connections open for free). The
// event streams set their own per-write deadlines.
func NewServer(app *App) *http.Server {
	return &http.Server{
		Handler:           app.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
}
