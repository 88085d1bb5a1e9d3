package main

import (
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/pflag"
)

// Accepted values of --log-format and --log-level.
const (
	logFormatText = "text"
	logFormatJSON = "json"
)

// redactedValue replaces the value of any attribute whose key names a credential.
const redactedValue = "<secret>"

// logFlags are the logging flags shared by the commands that do work (daemon, demo,
// run, prune, reconcile, ...).
type logFlags struct {
	format string
	level  string
}

// addLogFlags registers --log-format and --log-level on fs. Call logger after
// fs.Parse.
func addLogFlags(fs *pflag.FlagSet) *logFlags {
	lf := &logFlags{}
	fs.StringVar(&lf.format, "log-format", logFormatText, "log format: text or json")
	fs.StringVar(&lf.level, "log-level", "info", "log level: debug, info, warn or error")
	return lf
}

// logger builds the logger the flags ask for, writing to w (the command's
// m.Stderr). A bad flag value is a usage error (exit 2).
func (lf *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	return newLogger(w, lf.format, lf.level)
}

// newLogger returns a slog.Logger writing format ("text" or "json") at level
// ("debug", "info", "warn", "error") to w. Attributes whose key names a credential
// (password, secret, token, ...) are redacted whatever their type: cloud.Secret
// already prints <secret>, this also covers a plain string logged by mistake.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	lvl, err := parseLogLevel(level)
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: lvl, ReplaceAttr: redactCredentials}
	switch strings.ToLower(format) {
	case logFormatText:
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case logFormatJSON:
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, usageError("--log-format %q: want %s or %s", format, logFormatText, logFormatJSON)
	}
}

func parseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	default:
		return 0, usageError("--log-level %q: want debug, info, warn or error", s)
	}
}

// credentialKeys are substrings of attribute keys whose values are never printed.
var credentialKeys = []string{"password", "passwd", "secret", "token", "api_key", "apikey"}

func redactCredentials(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindGroup {
		return a
	}
	k := strings.ToLower(a.Key)
	for _, c := range credentialKeys {
		if strings.Contains(k, c) {
			return slog.String(a.Key, redactedValue)
		}
	}
	return a
}

// discardLogger returns a logger that drops everything, for commands run without
// logging flags.
func discardLogger() *slog.Logger {
	return slog.New(slog.DiscardHandler)
}
