package pool

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Seeds under testdata/fuzz/<Fuzzer>/ are real bytes: what PostgreSQL 15 sent at login and
// for a simple query (FuzzServerMessages), and what psql sent as startup packets
// (FuzzStartupPacket). The f.Add seeds below add the cases a capture cannot show (SCRAM and
// md5 requests, errors, truncation).

// fuzzCreds logs in with an md5 hash and SCRAM keys whose client key is known
// (pass-through): neither needs PBKDF2, whose cost the server's iteration count sets.
func fuzzCreds(t testing.TB) serverCreds {
	k, err := scramFromPassword("pw", []byte("salt-salt-salt-1"), 4096)
	if err != nil {
		t.Fatal(err)
	}
	return serverCreds{user: "app", md5: md5Hash("pw", "app"), keys: k}
}

func serverMsgs(msgs ...encoder) []byte { return appendMsg(nil, msgs...) }

// FuzzServerMessages feeds a server's side of a login and of a reset query to the code that
// decodes them (loginServer, simpleQuery). Whatever the bytes, the pool must return an
// error or a connection, never panic or hang, and a connection it accepts must describe what
// the server said: every setting the server reported, under its lower-case name.
func FuzzServerMessages(f *testing.F) {
	ok := serverMsgs(&pgproto3.AuthenticationOk{}, &pgproto3.ParameterStatus{Name: "TimeZone", Value: "UTC"},
		&pgproto3.ParameterStatus{Name: "is_superuser", Value: "on"},
		&pgproto3.BackendKeyData{ProcessID: 42, SecretKey: []byte{1, 2, 3, 4}}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	f.Add(ok)
	f.Add(append(serverMsgs(&pgproto3.AuthenticationMD5Password{Salt: [4]byte{1, 2, 3, 4}}), ok...))
	k := fuzzCreds(f).keys
	serverFirst := fmt.Sprintf("r=%s,s=%s,i=%d", "NONCEPLACEHOLDERextra", base64.StdEncoding.EncodeToString(k.salt), k.iter)
	f.Add(append(serverMsgs(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{"SCRAM-SHA-256"}},
		&pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)},
		&pgproto3.AuthenticationSASLFinal{Data: []byte("v=AAAA")}), ok...))
	f.Add(serverMsgs(&pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)}))
	f.Add(serverMsgs(&pgproto3.AuthenticationSASLFinal{Data: []byte("v=")}))
	f.Add(serverMsgs(&pgproto3.AuthenticationCleartextPassword{}))
	f.Add(serverMsgs(&pgproto3.ErrorResponse{Severity: "FATAL", Code: "28P01", Message: "password authentication failed"}))
	f.Add(append(ok, serverMsgs(&pgproto3.ParameterStatus{Name: "application_name", Value: "x"},
		&pgproto3.ErrorResponse{Severity: "ERROR", Code: "42601", Message: "syntax"}, &pgproto3.ReadyForQuery{TxStatus: 'E'})...))
	f.Add([]byte{'R', 0, 0, 0, 8, 0, 0, 0})
	f.Add([]byte{'K', 0, 0, 0, 6, 0, 0})
	f.Add([]byte{'Z', 0xff, 0xff, 0xff, 0xff})
	creds := fuzzCreds(f)
	cfg := &Config{ServerTLSMode: "disable"}
	f.Fuzz(func(t *testing.T, data []byte) {
		// The server-first message must extend the client's random nonce to get anywhere:
		// put that nonce wherever the input has the placeholder.
		c := &serverFuzzConn{fakeConn: fakeConn{r: bytes.NewReader(data)}}
		sc, err := loginServer(c, cfg, "127.0.0.1", "app", creds)
		if err != nil {
			return
		}
		want := map[string]string{}
		for _, ps := range sc.login {
			want[strings.ToLower(ps.Name)] = ps.Value
		}
		if !maps.Equal(want, sc.params) {
			t.Fatalf("login reported %v, the connection records %v", sc.login, sc.params)
		}
		for k := range sc.loginVals {
			if trackedParams[k] || !sc.reported[k] {
				t.Fatalf("login value of %q kept, which clients may change or the server never reported", k)
			}
		}
		// The rest of the input answers a reset.
		done := make(chan error, 1)
		go func() { done <- sc.simpleQuery(resetSQL, nil) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("simpleQuery did not return at the end of the input")
		}
	})
}

// serverFuzzConn is a fake server that substitutes the client's SCRAM nonce into what it
// sends, so that SCRAM exchanges from the corpus get past the nonce check.
type serverFuzzConn struct {
	fakeConn
	nonce string
}

func (c *serverFuzzConn) Write(b []byte) (int, error) {
	// SASLInitialResponse: 'p', length, mechanism\0, int32 length, "n,,n=,r=<nonce>"
	if i := bytes.Index(b, []byte("n,,n=,r=")); i >= 0 && c.nonce == "" {
		c.nonce = string(b[i+len("n,,n=,r="):])
		rest, _ := io.ReadAll(c.r)
		c.r = bytes.NewReader(bytes.ReplaceAll(rest, []byte("NONCEPLACEHOLDER"), []byte(c.nonce)))
	}
	return c.fakeConn.Write(b)
}

// FuzzStartupPacket reads startup-phase packets as the pool does and checks that a protocol
// 3 startup message it accepts has the bounds PostgreSQL sets and reads back the same after
// encoding.
func FuzzStartupPacket(f *testing.F) {
	f.Add(startupPacket("user", "alice", "database", "app", "application_name", "psql"))
	f.Add(startupPacket("user", "u", "user", "v"))
	f.Add(startupPacket("user", "", "database", "d"))
	f.Add([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f, 0, 0, 0, 9, 0, 3, 0, 0, 0})
	f.Add([]byte{0, 0, 0, 8})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			before := r.Len()
			code, buf, err := readStartup(r)
			if err != nil {
				return
			}
			if n := before - r.Len(); n < 8 || n > maxStartupLen || len(buf) != n-4 {
				t.Fatalf("accepted a packet of %d bytes (body %d)", n, len(buf))
			}
			if code>>16 != 3 {
				continue
			}
			p, err := parseStartupParams(buf)
			if err != nil {
				continue
			}
			enc := appendMsg(nil, &pgproto3.StartupMessage{ProtocolVersion: code, Parameters: p})
			code2, buf2, err := readStartup(bytes.NewReader(enc))
			if err != nil && len(enc) <= maxStartupLen {
				t.Fatalf("re-encoded startup message unreadable: %v", err)
			}
			if err != nil {
				continue
			}
			p2, err := parseStartupParams(buf2)
			if err != nil || code2 != code || !maps.Equal(p, p2) {
				t.Fatalf("round trip: %v %v -> %v %v (%v)", code, p, code2, p2, err)
			}
		}
	})
}

// FuzzAuthFile parses auth_file contents: an accepted file must read back the same users and
// secrets after being written out again, and never holds a user named by a comment.
func FuzzAuthFile(f *testing.F) {
	scram, err := SCRAMSecret("s3cret")
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte("; PgBouncer userlist\n\"alice\" \"plain pass\"\n\"bob\" \"md5" + strings.Repeat("0a", 16) + "\"\n\"carol\" \"" + scram + "\"\n"))
	f.Add([]byte(`"we""ird" "pa""ss" trailing` + "\r\n# c\n\n"))
	f.Add([]byte(`"x" "SCRAM-SHA-256$4096:c2FsdA==$AAAA:BBBB"`))
	f.Add([]byte("\"a\"\t\"b\"\n\"a\" \"c\""))
	f.Fuzz(func(t *testing.T, data []byte) {
		af, err := parseAuthFile(bytes.NewReader(data))
		if err != nil {
			return
		}
		var out strings.Builder
		for user, s := range af {
			if strings.ContainsAny(user, "\n") {
				t.Fatalf("user %q spans lines", user)
			}
			fmt.Fprintf(&out, "%s %s\n", quoteAuth(user), quoteAuth(formatSecret(s)))
		}
		af2, err := parseAuthFile(strings.NewReader(out.String()))
		if err != nil {
			t.Fatalf("written back %q: %v", out.String(), err)
		}
		if len(af2) != len(af) {
			t.Fatalf("%d users, %d after writing back", len(af), len(af2))
		}
		for user, s := range af {
			s2 := af2[user]
			if s2 == nil || formatSecret(s) != formatSecret(s2) {
				t.Fatalf("user %q: %q, then %v", user, formatSecret(s), s2)
			}
		}
	})
}

func quoteAuth(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func formatSecret(s *secret) string {
	switch {
	case s.scram != nil:
		b := base64.StdEncoding.EncodeToString
		return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", s.scram.iter, b(s.scram.salt), b(s.scram.storedKey), b(s.scram.serverKey))
	case s.md5 != "":
		return s.md5
	}
	return s.plain
}

// TestFuzzSeedsAreRealCaptures keeps the captured seeds from silently disappearing: the
// corpus directories must hold the PostgreSQL login and the psql startup packets.
func TestFuzzSeedsAreRealCaptures(t *testing.T) {
	for _, dir := range []string{"FuzzServerMessages", "FuzzStartupPacket"} {
		m, _ := filepath.Glob(filepath.Join("testdata", "fuzz", dir, "*"))
		if len(m) == 0 {
			t.Errorf("testdata/fuzz/%s has no seeds", dir)
		}
		for _, p := range m {
			b, err := os.ReadFile(p)
			if err != nil || !bytes.HasPrefix(b, []byte("go test fuzz v1\n")) {
				t.Errorf("%s: not a corpus file (%v)", p, err)
			}
		}
	}
}

// TestAnnouncedLengthIsNotAllocatedBeforeTheBytesCome: found by FuzzServerMessages, which
// slowed to a few executions a second: a header announcing a 1 GB message made whole()
// allocate 1 GB before reading a byte of it. Any peer could do that per message.
func TestAnnouncedLengthIsNotAllocatedBeforeTheBytesCome(t *testing.T) {
	in := append([]byte{'D', 0x3f, 0xff, 0xff, 0xff}, make([]byte, 100<<10)...)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	mr := msgReader{r: bufio.NewReaderSize(bytes.NewReader(in), bufSize)}
	_, n, err := mr.header()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mr.whole(n); err == nil {
		t.Fatal("a truncated message was returned whole")
	}
	runtime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 16<<20 {
		t.Fatalf("reading 100 kB of a message announced as 1 GB allocated %d MB", got>>20)
	}
	// and a message that does come in full is returned whole
	msg := appendMsg(nil, &pgproto3.DataRow{Values: [][]byte{bytes.Repeat([]byte("x"), 300<<10)}})
	mr = msgReader{r: bufio.NewReaderSize(bytes.NewReader(msg), bufSize)}
	_, n, _ = mr.header()
	got, err := mr.whole(n)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("a 300 kB message read back as %d bytes (%v)", len(got), err)
	}
}
