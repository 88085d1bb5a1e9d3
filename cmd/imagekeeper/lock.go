package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// errLocked says another process holds the database lock.
var errLocked = errors.New("another imagekeeper process (a daemon, or a run, prune or reconcile) is using this database")

// dbLock is an exclusive lock on <database>.lock that lives as long as the
// process holds the file open: the kernel drops it when the process dies, so a crash
// never leaves a stale lock behind. The file holds the holder's PID for the error a
// second daemon prints.
type dbLock struct {
	f    *os.File
	path string
}

// lockPath is where the lock for the database at db lives.
func lockPath(db string) string { return db + ".lock" }

// acquireLock takes the lock beside db or fails at once naming the holder's PID.
func acquireLock(db string) (*dbLock, error) {
	path := lockPath(db)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := flockExclusive(f); err != nil {
		defer f.Close()
		if errors.Is(err, errWouldBlock) {
			return nil, fmt.Errorf("%w: %s is held by pid %s", errLocked, path, holderPID(f))
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	// Only the holder writes, so a reader never sees a half-written PID for long.
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("write pid to lock file %s: %w", path, err)
		}
	}
	return &dbLock{f: f, path: path}, nil
}

// holderPID reads the PID the holder wrote, or says it is unknown.
func holderPID(f *os.File) string {
	buf := make([]byte, 32)
	n, _ := f.ReadAt(buf, 0)
	pid := strings.TrimSpace(string(bytes.TrimRight(buf[:n], "\x00")))
	if _, err := strconv.Atoi(pid); err != nil {
		return "unknown"
	}
	return pid
}

// Release drops the lock. The file stays: removing it would let a third process lock
// a new inode while a second still waits on the old one.
func (l *dbLock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	if err != nil {
		return fmt.Errorf("release lock %s: %w", l.path, err)
	}
	return nil
}
