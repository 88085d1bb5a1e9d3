package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/imagekeeper/imagekeeper/scheduler"
)

// The control socket lets `imagekeeper run`, `prune`, `reconcile`, `status` and `restore` ask
// the running daemon to do the work, with its own locks, instead of fighting it for
// the database lock.
//
// Where: a Unix socket next to the lineage, STATE.sock (for the packaged
// /var/lib/imagekeeper/imagekeeper.db, /var/lib/imagekeeper/imagekeeper.db.sock),
// mode 0660: the service user and its group, never the network. A client finds it
// from the policy file's state: (or --state), as it finds the lineage.
//
// Protocol: newline-delimited JSON on one connection per command. The client writes
// one request, {"args": ["run", "--policy=web", ...]}, the command line of one of
// the commands above with its flags as --name=value (never --config or --state:
// the daemon uses its own). The daemon runs that command in-process on its current
// config, lineage, cloud and runner, and writes what the command prints as it prints
// it, {"stdout": "..."} and {"stderr": "..."}, then {"exit": N} with the exit code.
// A client that goes away does not stop the work: the daemon finishes it.

// controlSocketSuffix is appended to the lineage's path to name the socket.
const controlSocketSuffix = ".sock"

// controlCommands are the commands a client may ask the daemon to run.
var controlCommands = []string{"run", "prune", "reconcile", "status", "restore"}

// maxControlRequest bounds the one line a client sends.
const maxControlRequest = 64 << 10

// controlRequest is what a client sends.
type controlRequest struct {
	Args []string `json:"args"`
}

// controlFrame is one line the daemon sends back.
type controlFrame struct {
	Stdout string `json:"stdout,omitempty"`
	Stderr string `json:"stderr,omitempty"`
	Exit   *int   `json:"exit,omitempty"`
}

// controlSocketPath is the socket of the lineage at statePath.
func controlSocketPath(statePath string) string { return statePath + controlSocketSuffix }

// controlServer serves the control socket of a daemon.
type controlServer struct {
	ln   net.Listener
	path string
	log  *slog.Logger
	// run runs one command line with its output on stdout and stderr and returns
	// the exit code.
	run func(ctx context.Context, args []string, stdout, stderr io.Writer) int
	ctx context.Context

	wg   sync.WaitGroup
	once sync.Once
}

// startControl listens on path. A socket left by a daemon that died is removed
// first: the caller holds the database lock, so no live daemon can be using it.
func startControl(ctx context.Context, path string, log *slog.Logger,
	run func(ctx context.Context, args []string, stdout, stderr io.Writer) int) (*controlServer, error) {
	if len(path) > 100 {
		// sun_path holds 108 bytes on Linux, fewer elsewhere.
		return nil, fmt.Errorf("control socket %s: path longer than a Unix socket allows (100 bytes): move the state database", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("control socket: remove stale %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	// The service user and its group (an operator in the group), nobody else.
	if err := os.Chmod(path, 0o660); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	s := &controlServer{ln: ln, path: path, log: log, run: run, ctx: ctx}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

func (s *controlServer) serve() {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return // closed
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(conn)
		}()
	}
}

// handle runs the one command a connection asks for.
func (s *controlServer) handle(conn net.Conn) {
	defer conn.Close()
	out := &frameWriter{enc: json.NewEncoder(conn)}
	exit := func(code int) { out.frame(controlFrame{Exit: &code}) }
	line, err := bufio.NewReaderSize(io.LimitReader(conn, maxControlRequest), 4096).ReadBytes('\n')
	if err != nil {
		s.log.Warn("control socket: read request", scheduler.LogKeyErr, err)
		return
	}
	var req controlRequest
	if err := json.Unmarshal(line, &req); err != nil || len(req.Args) == 0 {
		out.frame(controlFrame{Stderr: "imagekeeper daemon: bad control request\n"})
		exit(exitUsage)
		return
	}
	if !slices.Contains(controlCommands, req.Args[0]) {
		out.frame(controlFrame{Stderr: fmt.Sprintf("imagekeeper daemon: %q cannot be run through the control socket\n", req.Args[0])})
		exit(exitUsage)
		return
	}
	s.log.Info("control socket command", scheduler.LogKeyCommand, req.Args[0], "args", req.Args[1:])
	code := s.run(s.ctx, req.Args, out.stream(false), out.stream(true))
	exit(code)
}

// StopAccepting closes the socket and removes it: a client that comes later does
// the work itself, or finds the lock of the stopping daemon. Commands in progress
// go on; Wait waits for them.
func (s *controlServer) StopAccepting() {
	s.once.Do(func() {
		_ = s.ln.Close()
		_ = os.Remove(s.path)
	})
}

// Wait waits until the commands in progress have returned, or ctx is done; it
// reports whether they all returned.
func (s *controlServer) Wait(ctx context.Context) bool {
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}

// frameWriter writes frames to one client, one at a time. A client that went away
// makes writes fail; the command goes on regardless, so Write never fails.
type frameWriter struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (w *frameWriter) frame(f controlFrame) {
	w.mu.Lock()
	defer w.mu.Unlock()
	_ = w.enc.Encode(f)
}

// stream returns a writer for stdout or stderr.
func (w *frameWriter) stream(stderr bool) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		if stderr {
			w.frame(controlFrame{Stderr: string(p)})
		} else {
			w.frame(controlFrame{Stdout: string(p)})
		}
		return len(p), nil
	})
}

type writerFunc func(p []byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// errNoDaemon reports that no daemon listens on a lineage's control socket.
var errNoDaemon = errors.New("no daemon listening")

// callDaemon sends args to the daemon listening on socket and copies what it
// prints to stdout and stderr; it returns the command's exit code. errNoDaemon
// means nobody listens there (no socket, or one left by a daemon that died).
func callDaemon(ctx context.Context, socket string, args []string, stdout, stderr io.Writer) (int, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
		return 0, errNoDaemon
	}
	if err != nil {
		return 0, fmt.Errorf("control socket %s: %w", socket, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	if err := json.NewEncoder(conn).Encode(controlRequest{Args: args}); err != nil {
		return 0, fmt.Errorf("control socket %s: send: %w", socket, err)
	}
	dec := json.NewDecoder(conn)
	for {
		var f controlFrame
		if err := dec.Decode(&f); err != nil {
			if ctx.Err() != nil {
				return 0, fmt.Errorf("stopped watching; the daemon goes on with the work: %w", ctx.Err())
			}
			return 0, fmt.Errorf("control socket %s: the daemon closed the connection before the command finished: %w", socket, err)
		}
		if f.Stdout != "" {
			_, _ = io.WriteString(stdout, f.Stdout)
		}
		if f.Stderr != "" {
			_, _ = io.WriteString(stderr, f.Stderr)
		}
		if f.Exit != nil {
			return *f.Exit, nil
		}
	}
}

// forwardArgs rebuilds the command line of cmd for the daemon: its name, every flag
// the user set as --name=value (a repeated flag once per value), and args. --config
// and --state stay behind: they only told the client where to find the daemon.
func forwardArgs(cmd *cobra.Command, args []string) []string {
	out := []string{cmd.Name()}
	cmd.Flags().Visit(func(f *pflag.Flag) {
		if f.Name == "config" || f.Name == "state" {
			return
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			for _, v := range sv.GetSlice() {
				out = append(out, "--"+f.Name+"="+v)
			}
			return
		}
		out = append(out, "--"+f.Name+"="+f.Value.String())
	})
	return append(out, args...)
}
