package replica

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgharbor/pgharbor/restore"
)

// confMarker opens the block pgharbor writes into postgresql.auto.conf.
const confMarker = "# standby settings written by pgharbor replica"

// managedKeys are the settings a standby block owns: a stale copy of any of them (from the
// backup, from pg_rewind copying the primary's files, from an earlier run) is dropped before
// the block is written, so exactly one value of each stays.
var managedKeys = map[string]bool{
	"restore_command":           true,
	"primary_conninfo":          true,
	"primary_slot_name":         true,
	"recovery_target":           true,
	"recovery_target_timeline":  true,
	"recovery_target_action":    true,
	"recovery_target_inclusive": true,
}

// Settings are the standby configuration: the recovery keys plus any server settings the
// caller wants kept across restarts (port, unix_socket_directories).
type Settings struct {
	PrimaryConnInfo string
	SlotName        string
	RestoreCommand  string
	// Standby writes recovery_target_timeline = 'latest' (a standby follows the primary
	// through promotions); false leaves the timeline to the caller.
	Standby bool
	// Extra are further settings (key -> unquoted value), written after the recovery keys.
	Extra map[string]string
}

// RenderAutoConf returns old (the current postgresql.auto.conf) without pgharbor's earlier
// blocks and without any setting the new block sets, followed by the new block.
func RenderAutoConf(old string, s Settings) string {
	drop := map[string]bool{}
	for k := range managedKeys {
		drop[k] = true
	}
	for k := range s.Extra {
		drop[k] = true
	}
	var b strings.Builder
	for _, line := range strings.SplitAfter(old, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" {
			continue
		}
		if strings.HasPrefix(trimmed, confMarker) || strings.HasPrefix(trimmed, serverMarker) || strings.HasPrefix(trimmed, "# recovery settings written by pgharbor") {
			continue
		}
		key, _, _ := strings.Cut(trimmed, "=")
		key = strings.TrimSpace(key)
		if drop[key] || strings.HasPrefix(key, "recovery_target_") {
			continue
		}
		b.WriteString(strings.TrimRight(line, "\n"))
		b.WriteString("\n")
	}
	b.WriteString(confMarker + "\n")
	if s.RestoreCommand != "" {
		fmt.Fprintf(&b, "restore_command = %s\n", restore.QuoteConf(s.RestoreCommand))
	}
	if s.Standby {
		b.WriteString("recovery_target_timeline = 'latest'\n")
	}
	if s.PrimaryConnInfo != "" {
		fmt.Fprintf(&b, "primary_conninfo = %s\n", restore.QuoteConf(s.PrimaryConnInfo))
	}
	if s.SlotName != "" {
		fmt.Fprintf(&b, "primary_slot_name = %s\n", restore.QuoteConf(s.SlotName))
	}
	keys := make([]string, 0, len(s.Extra))
	for k := range s.Extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, restore.QuoteConf(s.Extra[k]))
	}
	return b.String()
}

// WriteAutoConf rewrites postgresql.auto.conf of pgdata with s (see RenderAutoConf), and
// standby.signal when s.Standby, both owned by owner (nil: the current user). The new
// content goes to a temporary file that is synced and renamed over the old one.
func WriteAutoConf(pgdata string, s Settings, owner *syscall.Credential) error {
	p := filepath.Join(pgdata, "postgresql.auto.conf")
	old, err := os.ReadFile(p)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %w", p, err)
	}
	if err := writeFileAtomic(p, []byte(RenderAutoConf(string(old), s)), owner); err != nil {
		return err
	}
	if s.Standby {
		if err := writeFileAtomic(filepath.Join(pgdata, "standby.signal"), nil, owner); err != nil {
			return err
		}
		// A recovery.signal next to standby.signal is ignored by PostgreSQL, but it confuses
		// whoever reads the directory later.
		if err := os.Remove(filepath.Join(pgdata, "recovery.signal")); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

func writeFileAtomic(p string, data []byte, owner *syscall.Credential) error {
	tmp := p + ".pgharbor-tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && owner != nil {
		err = os.Chown(tmp, int(owner.Uid), int(owner.Gid))
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", p, err)
	}
	if d, err := os.Open(filepath.Dir(p)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// WithApplicationName returns conninfo with application_name set to name, unless the
// connection string already names one, and the application_name the standby will have.
// Both forms libpq accepts are handled: keyword=value pairs and postgres:// URLs.
func WithApplicationName(conninfo, name string) (string, string, error) {
	cfg, err := pgconn.ParseConfig(conninfo)
	if err != nil {
		return "", "", fmt.Errorf("primary connection string: %w", err)
	}
	if have, ok := cfg.RuntimeParams["application_name"]; ok || name == "" {
		return conninfo, have, nil
	}
	if strings.HasPrefix(conninfo, "postgres://") || strings.HasPrefix(conninfo, "postgresql://") {
		sep := "?"
		if strings.Contains(conninfo, "?") {
			sep = "&"
		}
		return conninfo + sep + "application_name=" + url.QueryEscape(name), name, nil
	}
	return strings.TrimSpace(conninfo) + " application_name=" + quoteConnValue(name), name, nil
}

// quoteConnValue quotes a value for a keyword=value connection string.
func quoteConnValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " '\\") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// serverMarker opens the block of server settings written by SetServerSettings.
const serverMarker = "# server settings written by pgharbor"

// RenderServerSettings returns old without earlier values of the keys in set, followed by
// a block with set (sorted); recovery settings in old are kept as they are.
func RenderServerSettings(old string, set map[string]string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(old, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, serverMarker) {
			continue
		}
		key, _, _ := strings.Cut(trimmed, "=")
		if _, ok := set[strings.TrimSpace(key)]; ok {
			continue
		}
		b.WriteString(strings.TrimRight(line, "\n"))
		b.WriteString("\n")
	}
	if len(set) == 0 {
		return b.String()
	}
	b.WriteString(serverMarker + "\n")
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, restore.QuoteConf(set[k]))
	}
	return b.String()
}

// SetServerSettings writes set into postgresql.auto.conf of pgdata (see RenderServerSettings).
func SetServerSettings(pgdata string, set map[string]string, owner *syscall.Credential) error {
	p := filepath.Join(pgdata, "postgresql.auto.conf")
	old, err := os.ReadFile(p)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %w", p, err)
	}
	return writeFileAtomic(p, []byte(RenderServerSettings(string(old), set)), owner)
}
