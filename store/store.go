// Package store is imagekeeper's lineage: which images we asked for, of which server,
// for which policy and slot, what became of them and of the volume snapshots behind
// them, and an append-only audit of every decision. It is SQLite through
// github.com/mattn/go-sqlite3.
//
// The database is opened with WAL, foreign keys on, a busy timeout and
// _txlock=immediate, through two pools. Writes (and the reads inside a write's
// transaction) go through a single connection: SQLite allows one writer, and a
// pool of one makes every writer in this process queue in Go instead of failing
// with "database is locked". Reads outside transactions go through a separate pool
// of read-only connections (readConns): under WAL a reader sees the last commit and
// never blocks the writer, so a long read (a reconcile over a million rows, a
// gauge) does not hold up a createImage intent. Code in this package never keeps
// rows of the write connection open while it issues another statement, and never
// holds a transaction across a cloud call.
//
// Timestamps are stored in UTC as fixed-width text with nanoseconds
// ("2006-01-02T15:04:05.000000000Z"): text order is time order, and the sqlite3
// shell shows them readably. The clock is injectable (Options.Now).
//
// The schema lives in embedded, ordered migrations (migrations/NNNN_name.sql), each
// applied in its own transaction and recorded in schema_migrations. A database
// written by a newer imagekeeper is refused with ErrFutureSchema.
package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	_ "github.com/mattn/go-sqlite3" // registers the "sqlite3" driver
)

// Sentinel errors of the store.
var (
	// ErrNotFound means no row matched.
	ErrNotFound = errors.New("not found")
	// ErrFutureSchema means the database was migrated by a newer imagekeeper.
	ErrFutureSchema = errors.New("database schema is newer than this binary")
	// ErrConflict means a state change was refused because the row is not in a state
	// that allows it (for example marking a deleted image good).
	ErrConflict = errors.New("state conflict")
)

// timeFormat is the stored form of every timestamp: UTC, fixed width, so that text
// order is time order.
const timeFormat = "2006-01-02T15:04:05.000000000Z"

// BusyTimeout is how long a statement waits for another process's write lock (for
// example a CLI command next to the daemon) before it fails.
const BusyTimeout = 10 * time.Second

//go:embed migrations/*.sql
var migrationFS embed.FS

// Options configures a Store.
type Options struct {
	// Now is the clock for every timestamp the store writes; time.Now when nil.
	Now func() time.Time
}

// readConns is the size of the read-only pool: enough for a reconcile, a prune and
// the gauges at once; each connection has its own page cache.
const readConns = 4

// Store is an open lineage database. It is safe for concurrent use.
type Store struct {
	// db is the one write connection; rdb the read-only pool (see the package doc).
	db    *sql.DB
	rdb   *sql.DB
	now   func() time.Time
	owner string
	path  string
}

type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations reads the embedded migrations in version order.
func loadMigrations() ([]migration, error) { return parseMigrations(migrationFS) }

// parseMigrations reads migrations/*.sql from fsys and checks that their versions
// run 1, 2, 3... without a gap: a database records only its newest version, so a
// migration numbered past a gap, or slotted into one later, would be applied to
// some databases and silently skipped on others.
func parseMigrations(fsys fs.FS) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, "migrations")
	if err != nil {
		return nil, fmt.Errorf("read embedded migrations: %w", err)
	}
	var ms []migration
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".sql") {
			continue
		}
		num, _, ok := strings.Cut(name, "_")
		if !ok {
			return nil, fmt.Errorf("migration %s: name must be NNNN_description.sql", name)
		}
		v, err := strconv.Atoi(num)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: bad version %q", name, num)
		}
		body, err := fs.ReadFile(fsys, path.Join("migrations", name))
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", name, err)
		}
		ms = append(ms, migration{version: v, name: name, sql: string(body)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i := 1; i < len(ms); i++ {
		if ms[i].version == ms[i-1].version {
			return nil, fmt.Errorf("migrations %s and %s share version %d", ms[i-1].name, ms[i].name, ms[i].version)
		}
	}
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: version %d where %d was due (versions must run 1, 2, 3... without a gap)", m.name, m.version, i+1)
		}
	}
	return ms, nil
}

// LatestSchemaVersion returns the newest schema version this binary knows.
func LatestSchemaVersion() int {
	ms, err := loadMigrations()
	if err != nil || len(ms) == 0 {
		return 0
	}
	return ms[len(ms)-1].version
}

// dsn builds the go-sqlite3 data source name. The path is percent-encoded where
// SQLite's URI parser would otherwise cut it (?, #, %).
func dsn(p string) string {
	return "file:" + escapePath(p) + "?_journal_mode=WAL&_foreign_keys=1&_synchronous=NORMAL&_txlock=immediate" +
		"&_busy_timeout=" + strconv.Itoa(int(BusyTimeout/time.Millisecond))
}

// readDSN is the data source name of the read-only pool: mode=ro, so that a bug can
// never write through it, and no journal-mode pragma (the writer set WAL, which is
// persistent; a read-only connection could not set it).
//
// Each read connection's page cache is readCacheKiB, not SQLite's 2 MiB: the pool's
// reads are per-policy counts from an index and walks of far more than any cache
// holds (retention, reconcile), which the OS page cache serves just as well; four
// full 2 MiB caches were resident memory for nothing.
func readDSN(p string) string {
	return "file:" + escapePath(p) + "?mode=ro&_query_only=1&_cache_size=-" + strconv.Itoa(readCacheKiB) +
		"&_busy_timeout=" + strconv.Itoa(int(BusyTimeout/time.Millisecond))
}

// readCacheKiB is the page cache of each read connection, in KiB.
const readCacheKiB = 512

func escapePath(p string) string {
	return strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(p)
}

// Open opens (creating if needed, mode 0600) the lineage database at path, applies
// every migration it lacks, and makes the installation's owner id on first use.
// A database whose schema is newer than this binary knows is refused with an error
// wrapping ErrFutureSchema that names both versions.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	if path == "" {
		return nil, errors.New("open store: empty path")
	}
	if strings.HasPrefix(path, ":memory:") || strings.HasPrefix(path, "file:") {
		return nil, fmt.Errorf("open store %s: need a plain file path", path)
	}
	// SQLite would create the file with the process umask (usually 0644); the
	// lineage names every server we back up, so create it private first. SQLite gives
	// the -wal and -shm files the database file's mode.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	db, err := sql.Open("sqlite3", dsn(path))
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	s := &Store{db: db, now: now, path: path}
	if err := s.init(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	// The read pool opens after init: the file is in WAL mode and migrated by then.
	rdb, err := sql.Open("sqlite3", readDSN(path))
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s for reading: %w", path, err)
	}
	rdb.SetMaxOpenConns(readConns)
	rdb.SetMaxIdleConns(readConns)
	rdb.SetConnMaxIdleTime(5 * time.Minute)
	s.rdb = rdb
	if err := rdb.PingContext(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store %s for reading: %w", path, err)
	}
	return s, nil
}

func (s *Store) init(ctx context.Context) error {
	var mode string
	if err := s.db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("read journal mode: %w", err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("journal mode is %q, want wal", mode)
	}
	if err := s.migrate(ctx); err != nil {
		return err
	}
	return s.ensureOwner(ctx)
}

// migrate applies every embedded migration newer than the database's version, each
// in its own transaction.
func (s *Store) migrate(ctx context.Context) error {
	ms, err := loadMigrations()
	if err != nil {
		return err
	}
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT NOT NULL,
		applied_at TEXT NOT NULL
	)`); err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	current, err := s.SchemaVersion(ctx)
	if err != nil {
		return err
	}
	latest := 0
	if len(ms) > 0 {
		latest = ms[len(ms)-1].version
	}
	if current > latest {
		return fmt.Errorf("%w: database is at schema version %d, this imagekeeper knows up to %d; upgrade imagekeeper",
			ErrFutureSchema, current, latest)
	}
	for _, m := range ms {
		if m.version <= current {
			continue
		}
		err := s.inTx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, m.sql); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
				m.version, m.name, s.stamp())
			return err
		})
		if err != nil {
			return fmt.Errorf("apply migration %s: %w", m.name, err)
		}
	}
	return nil
}

// SchemaVersion returns the database's schema version (the newest applied migration).
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v sql.NullInt64
	if err := s.reader().QueryRowContext(ctx, `SELECT MAX(version) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return int(v.Int64), nil
}

func (s *Store) ensureOwner(ctx context.Context) error {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return fmt.Errorf("make owner id: %w", err)
	}
	// INSERT OR IGNORE: two processes opening a new database at once agree on one id.
	if _, err := s.db.ExecContext(ctx, `INSERT OR IGNORE INTO installation (id, owner, created_at) VALUES (1, ?, ?)`,
		hex.EncodeToString(b), s.stamp()); err != nil {
		return fmt.Errorf("record owner id: %w", err)
	}
	if err := s.db.QueryRowContext(ctx, `SELECT owner FROM installation WHERE id = 1`).Scan(&s.owner); err != nil {
		return fmt.Errorf("read owner id: %w", err)
	}
	return nil
}

// reader returns the pool for reads outside a transaction: the read-only pool once
// it is open (during Open, before it is, the write connection).
func (s *Store) reader() *sql.DB {
	if s.rdb != nil {
		return s.rdb
	}
	return s.db
}

// Close closes the database.
func (s *Store) Close() error {
	var rerr error
	if s.rdb != nil {
		rerr = s.rdb.Close()
	}
	if err := errors.Join(s.db.Close(), rerr); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	return nil
}

// Owner returns this installation's id, made once when the database was created. It
// is the imagekeeper_owner stamp on every image we request.
func (s *Store) Owner() string { return s.owner }

// Path returns the database file path.
func (s *Store) Path() string { return s.path }

// Now returns the store's clock reading in UTC.
func (s *Store) Now() time.Time { return s.now().UTC() }

// stamp returns the current time in the stored form.
func (s *Store) stamp() string { return s.now().UTC().Format(timeFormat) }

// inTx runs f in a transaction (BEGIN IMMEDIATE, by the DSN) and commits it when f
// returns nil. Keep f short and free of cloud calls: it holds the write lock.
func (s *Store) inTx(ctx context.Context, f func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := f(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// fmtTime returns t in the stored form, or nil (NULL) for the zero time.
func fmtTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC().Format(timeFormat)
}

// parseTime reads a stored timestamp; NULL gives the zero time.
func parseTime(ns sql.NullString) (time.Time, error) {
	if !ns.Valid || ns.String == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(timeFormat, ns.String)
	if err != nil {
		// Accept any RFC 3339 form, for rows written by hand with the sqlite3 shell.
		t2, err2 := time.Parse(time.RFC3339Nano, ns.String)
		if err2 != nil {
			return time.Time{}, fmt.Errorf("parse timestamp %q: %w", ns.String, err)
		}
		t = t2
	}
	return t.UTC(), nil
}

// nullString turns "" into NULL.
func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
