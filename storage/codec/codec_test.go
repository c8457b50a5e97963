package codec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"filippo.io/age"
)

// Fixed test keys (generated for these tests only) so that fuzz workers, which run in
// separate processes, can decrypt the seed corpus.
const (
	testIdentityA  = "AGE-SECRET-KEY-1EXZUMQC3SS0J6VVK05DSX82XYUXRP8HW7YTFHVWR2PUZ38S65P6QRCVHMS"
	testRecipientA = "age1ac2h6x373h7j0w2ed2nekw92z9rrlsmj6vxkqk3x8r9udnseqytq6f62kc"
	testIdentityB  = "AGE-SECRET-KEY-19R2QQYY67R9EXEKT0GZSFSHR0AGWPX6PHGZU5PREPQV4ACKTRW7Q6NU0G5"
	testRecipientB = "age1cq7mg473nnh6n5kl6gazhzmx8uc7kc5rts5fvmsejqt74kwsvvxq4932jf"
	testPassphrase = "correct horse battery staple"
	testScrypt     = 6 // 2^6: fast; production uses age's default
)

var (
	compressions = []string{"none", "zstd"}
	encryptions  = []string{"none", "age", "passphrase"}
)

// testConfig is a writer+reader configuration for one combination.
func testConfig(comp, enc string) Config {
	cfg := Config{Compression: comp, Encryption: enc, ScryptWorkFactor: testScrypt}
	switch enc {
	case "age":
		cfg.Recipients = []string{testRecipientA}
		cfg.Identities = []string{testIdentityA}
	case "passphrase":
		cfg.Passphrase = testPassphrase
	}
	return cfg
}

func mustNew(t testing.TB, cfg Config) *Codec {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", redact(cfg), err)
	}
	return c
}

func redact(cfg Config) Config {
	cfg.Identities = nil
	cfg.Passphrase = ""
	cfg.DataKey = ""
	return cfg
}

func forEachCombo(t *testing.T, fn func(t *testing.T, c *Codec)) {
	for _, comp := range compressions {
		for _, enc := range encryptions {
			t.Run(comp+"_"+enc, func(t *testing.T) {
				fn(t, mustNew(t, testConfig(comp, enc)))
			})
		}
	}
}

// pgLikeData imitates heap pages of pgbench_accounts: 8 KiB pages, a page header, line
// pointers and ~120-byte tuples (aid, bid, abalance, blank-padded filler).
func pgLikeData(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	out := make([]byte, 0, n+8192)
	aid := uint32(1)
	for len(out) < n {
		page := make([]byte, 8192)
		binary.LittleEndian.PutUint64(page[0:], uint64(0x16B3740)+uint64(len(out)))
		const tupleLen = 128
		ntup := (8192 - 24) / (tupleLen + 4)
		binary.LittleEndian.PutUint16(page[12:], uint16(24+4*ntup))
		binary.LittleEndian.PutUint16(page[14:], uint16(8192-ntup*tupleLen))
		binary.LittleEndian.PutUint16(page[16:], 8192)
		binary.LittleEndian.PutUint16(page[18:], 0x2004)
		for i := 0; i < ntup; i++ {
			off := 8192 - (i+1)*tupleLen
			binary.LittleEndian.PutUint32(page[24+4*i:], uint32(off)|uint32(121)<<17|1<<15)
			tup := page[off : off+tupleLen]
			binary.LittleEndian.PutUint32(tup[0:], 750+uint32(rng.IntN(4))) // xmin
			binary.LittleEndian.PutUint16(tup[18:], 4)                      // natts
			tup[22] = 24                                                    // t_hoff
			binary.LittleEndian.PutUint32(tup[24:], aid)
			binary.LittleEndian.PutUint32(tup[28:], aid/100000+1)
			binary.LittleEndian.PutUint32(tup[32:], uint32(rng.IntN(10000)))
			tup[36] = 84<<1 | 1
			for j := 37; j < 37+84; j++ {
				tup[j] = ' '
			}
			aid++
		}
		out = append(out, page...)
	}
	return out[:n]
}

func randomData(n int, seed uint64) []byte {
	b := make([]byte, n)
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	_, _ = rng.Read(b)
	return b
}

// seal writes payload through NewWriter in awkward write sizes.
func seal(t testing.TB, c *Codec, payload []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := c.NewWriter(&buf)
	if err != nil {
		t.Fatalf("NewWriter: %v", err)
	}
	for p := payload; len(p) > 0; {
		n := min(len(p), 100_003)
		if _, err := w.Write(p[:n]); err != nil {
			t.Fatalf("Write: %v", err)
		}
		p = p[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return buf.Bytes()
}

// open reads a whole object; it returns what was read before any error too.
func open(c *Codec, sealed []byte) ([]byte, error) {
	r, err := c.NewReader(bytes.NewReader(sealed))
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func TestRoundTripEveryCombination(t *testing.T) {
	payloads := map[string][]byte{
		"0B":              {},
		"1B":              {0x42},
		"1MiBRandom":      randomData(1<<20, 1),
		"20MiBCompressed": pgLikeData(20<<20, 2),
	}
	forEachCombo(t, func(t *testing.T, c *Codec) {
		for name, payload := range payloads {
			sealed := seal(t, c, payload)
			h, err := ParseHeader(sealed)
			if err != nil {
				t.Fatalf("%s: header: %v", name, err)
			}
			if h != c.Header() {
				t.Fatalf("%s: header %+v, want %+v", name, h, c.Header())
			}
			got, err := open(c, sealed)
			if err != nil {
				t.Fatalf("%s: read: %v", name, err)
			}
			if !bytes.Equal(got, payload) {
				t.Fatalf("%s: round trip changed the payload (%d bytes in, %d out)", name, len(payload), len(got))
			}
			if name == "20MiBCompressed" && h.Compression == CompressionZstd && len(sealed) > len(payload)/4 {
				t.Errorf("%s: sealed %d bytes from %d: compression not effective", name, len(sealed), len(payload))
			}
			if name == "1MiBRandom" && len(sealed) > len(payload)+len(payload)/100+1024 {
				t.Errorf("%s: sealed %d bytes from %d: too much overhead", name, len(sealed), len(payload))
			}
		}
	})
}

func TestSealOpen(t *testing.T) {
	forEachCombo(t, func(t *testing.T, c *Codec) {
		plain := []byte(`{"manifest":true}`)
		sealed, err := c.Seal(plain)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.Open(sealed)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("Open = %q, %v", got, err)
		}
	})
}

func TestObjectsAreReadByTheirHeaderNotTheReadersConfig(t *testing.T) {
	payload := pgLikeData(300<<10, 3)
	reader := mustNew(t, Config{Compression: "none", Encryption: "none",
		Identities: []string{testIdentityA}, Passphrase: testPassphrase, ScryptWorkFactor: testScrypt})
	forEachCombo(t, func(t *testing.T, c *Codec) {
		got, err := open(reader, seal(t, c, payload))
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("read with a differently configured codec: %v (equal=%v)", err, bytes.Equal(got, payload))
		}
	})
}

func TestMissingIdentityIsAClearError(t *testing.T) {
	sealed := seal(t, mustNew(t, testConfig("zstd", "age")), []byte("secret"))
	writeOnly := mustNew(t, Config{Encryption: "age", Recipients: []string{testRecipientA}})
	_, err := open(writeOnly, sealed)
	if !errors.Is(err, ErrNoIdentity) || !strings.Contains(err.Error(), "configure an identity (--identity FILE)") {
		t.Fatalf("err = %v, want ErrNoIdentity", err)
	}

	sealed = seal(t, mustNew(t, testConfig("zstd", "passphrase")), []byte("secret"))
	_, err = open(writeOnly, sealed)
	if !errors.Is(err, ErrNoIdentity) || !strings.Contains(err.Error(), "passphrase") {
		t.Fatalf("err = %v, want ErrNoIdentity mentioning the passphrase", err)
	}
}

func TestWrongIdentityIsAClearError(t *testing.T) {
	sealed := seal(t, mustNew(t, testConfig("zstd", "age")), []byte("secret"))
	other := mustNew(t, Config{Encryption: "none", Identities: []string{testIdentityB}})
	got, err := open(other, sealed)
	if !errors.Is(err, ErrWrongKey) || !strings.Contains(err.Error(), "no identity matches the object's recipients") {
		t.Fatalf("err = %v, want ErrWrongKey", err)
	}
	if len(got) != 0 {
		t.Fatalf("returned %d bytes with the wrong key", len(got))
	}
	if strings.Contains(err.Error(), testIdentityB) {
		t.Fatal("error message contains the secret key")
	}
}

func TestWrongPassphraseIsAClearError(t *testing.T) {
	sealed := seal(t, mustNew(t, testConfig("zstd", "passphrase")), []byte("secret"))
	other := mustNew(t, Config{Encryption: "none", Passphrase: "not it", ScryptWorkFactor: testScrypt})
	_, err := open(other, sealed)
	if !errors.Is(err, ErrWrongKey) || !strings.Contains(err.Error(), "wrong passphrase") {
		t.Fatalf("err = %v, want ErrWrongKey (wrong passphrase)", err)
	}
}

// Key rotation: objects sealed to the old recipient stay readable with the old identity
// while new objects go to the new recipient; several recipients can each decrypt.
func TestRecipientRotationKeepsOldObjectsReadable(t *testing.T) {
	payload := pgLikeData(200<<10, 4)
	old := seal(t, mustNew(t, Config{Encryption: "age", Recipients: []string{testRecipientA}}), payload)
	both := seal(t, mustNew(t, Config{Encryption: "age", Recipients: []string{testRecipientA, testRecipientB}}), payload)
	newer := seal(t, mustNew(t, Config{Encryption: "age", Recipients: []string{testRecipientB}}), payload)

	onlyA := mustNew(t, Config{Encryption: "none", Identities: []string{testIdentityA}})
	onlyB := mustNew(t, Config{Encryption: "none", Identities: []string{testIdentityB}})
	aAndB := mustNew(t, Config{Encryption: "none", Identities: []string{testIdentityB, testIdentityA}})
	for _, tc := range []struct {
		name   string
		reader *Codec
		obj    []byte
		ok     bool
	}{
		{"old/A", onlyA, old, true}, {"old/B", onlyB, old, false}, {"old/AB", aAndB, old, true},
		{"both/A", onlyA, both, true}, {"both/B", onlyB, both, true},
		{"new/A", onlyA, newer, false}, {"new/B", onlyB, newer, true}, {"new/AB", aAndB, newer, true},
	} {
		got, err := open(tc.reader, tc.obj)
		if tc.ok && (err != nil || !bytes.Equal(got, payload)) {
			t.Errorf("%s: %v", tc.name, err)
		}
		if !tc.ok && !errors.Is(err, ErrWrongKey) {
			t.Errorf("%s: err = %v, want ErrWrongKey", tc.name, err)
		}
	}
}

func TestPostQuantumRecipients(t *testing.T) {
	id, err := age.GenerateHybridIdentity()
	if err != nil {
		t.Fatal(err)
	}
	c := mustNew(t, Config{Encryption: "age", Recipients: []string{id.Recipient().String()}, Identities: []string{id.String()}})
	payload := randomData(100<<10, 5)
	got, err := open(c, seal(t, c, payload))
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("round trip: %v", err)
	}
	_, err = New(Config{Encryption: "age", Recipients: []string{id.Recipient().String(), testRecipientA}})
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "cannot be mixed") {
		t.Fatalf("mixing pq and classic: err = %v", err)
	}
}

// checkDamaged asserts that reading a damaged object fails. When verifiedPrefix is set
// (encrypted object, intact clear header: age authenticates each 64 KiB chunk before
// releasing it) the bytes returned before the error must be a prefix of the payload;
// unencrypted objects are verified at their end, so they may yield wrong bytes before
// the error.
func checkDamaged(t *testing.T, c *Codec, damagedObj, payload []byte, what string, verifiedPrefix bool) error {
	t.Helper()
	got, err := open(c, damagedObj)
	if err == nil {
		t.Fatalf("%s: read succeeded (equal payload: %v)", what, bytes.Equal(got, payload))
	}
	if verifiedPrefix && !bytes.HasPrefix(payload, got) {
		t.Fatalf("%s: returned %d bytes that are not a prefix of the payload before failing with %v", what, len(got), err)
	}
	return err
}

func encrypted(c *Codec) bool { return c.Header().Encryption != EncryptionNone }

func TestTruncatedObjectIsDetected(t *testing.T) {
	payload := append(randomData(150<<10, 6), pgLikeData(150<<10, 7)...)
	forEachCombo(t, func(t *testing.T, c *Codec) {
		sealed := seal(t, c, payload)
		n := len(sealed)
		cuts := []int{0, 1, 3, 4, 7, 8, 9, 12, 40, 100, 200, n / 3, n / 2, n - 65536 - 16, n - 100, n - 17, n - 16, n - 5, n - 4, n - 3, n - 1}
		for _, cut := range cuts {
			if cut < 0 || cut >= n {
				continue
			}
			err := checkDamaged(t, c, sealed[:cut], payload, fmt.Sprintf("cut at %d of %d", cut, n), encrypted(c))
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("cut at %d: err = %v, want ErrCorrupt/ErrTruncated", cut, err)
			}
			if msg := err.Error(); !strings.Contains(msg, "truncated") && !strings.Contains(msg, "unexpected EOF") {
				t.Errorf("cut at %d: error %q does not mention truncation", cut, msg)
			}
		}
	})
}

func TestTruncatedHeaderSaysTruncated(t *testing.T) {
	c := mustNew(t, testConfig("zstd", "none"))
	_, err := open(c, []byte("PGHB\x01"))
	if !errors.Is(err, ErrTruncated) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err = %v, want ErrTruncated", err)
	}
}

func TestFlippedByteIsDetectedAnywhereInASmallObject(t *testing.T) {
	payload := pgLikeData(3000, 8)
	forEachCombo(t, func(t *testing.T, c *Codec) {
		sealed := seal(t, c, payload)
		for i := range sealed {
			if i > 400 && i < len(sealed)-100 && i%7 != 0 {
				continue // every byte of the headers and the end, a sample of the middle
			}
			for _, mask := range []byte{0x01, 0x80} {
				bad := bytes.Clone(sealed)
				bad[i] ^= mask
				err := checkDamaged(t, c, bad, payload, fmt.Sprintf("byte %d ^ %#x of %d", i, mask, len(sealed)), encrypted(c) && i >= HeaderSize)
				if i >= HeaderSize && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrWrongKey) {
					t.Fatalf("byte %d: err = %v, want ErrCorrupt or ErrWrongKey", i, err)
				}
			}
		}
	})
}

func TestFlippedByteIsDetectedInALargeObject(t *testing.T) {
	payload := append(pgLikeData(400<<10, 9), randomData(400<<10, 10)...)
	forEachCombo(t, func(t *testing.T, c *Codec) {
		sealed := seal(t, c, payload)
		n := len(sealed)
		for _, i := range []int{HeaderSize + 200, 70_000, n / 3, n / 2, n - 70_000, n - 20, n - 5, n - 1} {
			bad := bytes.Clone(sealed)
			bad[i] ^= 0x10
			err := checkDamaged(t, c, bad, payload, fmt.Sprintf("byte %d of %d", i, n), encrypted(c))
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("byte %d: err = %v, want ErrCorrupt", i, err)
			}
		}
	})
}

func TestClearHeaderIsBoundToTheEncryptedCopy(t *testing.T) {
	payload := pgLikeData(50<<10, 11)
	c := mustNew(t, testConfig("zstd", "age"))
	sealed := seal(t, c, payload)
	sealed[5] = byte(CompressionNone) // would return zstd bytes as the payload if unchecked
	err := checkDamaged(t, c, sealed, payload, "compression id 1→0", true)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "authenticated copy") {
		t.Fatalf("err = %v", err)
	}
}

func TestTrailingDataIsRejected(t *testing.T) {
	payload := pgLikeData(100<<10, 12)
	forEachCombo(t, func(t *testing.T, c *Codec) {
		sealed := seal(t, c, payload)
		for _, extra := range [][]byte{{0}, []byte("garbage"), seal(t, c, payload)} {
			err := checkDamaged(t, c, append(bytes.Clone(sealed), extra...), payload, fmt.Sprintf("%d trailing bytes", len(extra)), encrypted(c))
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("err = %v, want ErrCorrupt", err)
			}
		}
	})
}

func TestUnknownHeaderFieldsAreRejected(t *testing.T) {
	c := mustNew(t, testConfig("zstd", "age"))
	sealed := seal(t, c, []byte("payload"))
	for _, tc := range []struct {
		pos  int
		val  byte
		want string
	}{
		{0, 'X', "does not start with"},
		{4, 2, "envelope version 2"},
		{4, 0, "envelope version 0"},
		{5, 9, "unknown compression id 9"},
		{6, 7, "unknown encryption id 7"},
		{7, 4, "unknown header flags"},
		{7, 0x81, "unknown header flags"},
	} {
		bad := bytes.Clone(sealed)
		bad[tc.pos] = tc.val
		_, err := open(c, bad)
		if !errors.Is(err, ErrUnknownFormat) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("byte %d = %d: err = %v, want ErrUnknownFormat %q", tc.pos, tc.val, err, tc.want)
		}
		if _, err := ReadHeader(bytes.NewReader(bad)); !errors.Is(err, ErrUnknownFormat) {
			t.Errorf("ReadHeader: byte %d = %d: err = %v", tc.pos, tc.val, err)
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no encryption chosen", Config{}, "encryption must be set explicitly"},
		{"unknown encryption", Config{Encryption: "aes"}, `unknown encryption "aes"`},
		{"unknown compression", Config{Encryption: "none", Compression: "lz4"}, `unknown compression "lz4"`},
		{"level too high", Config{Encryption: "none", Level: 40}, "level 40"},
		{"negative level", Config{Encryption: "none", Level: -1}, "level -1"},
		{"level without compression", Config{Encryption: "none", Compression: "none", Level: 5}, "compression is none"},
		{"negative concurrency", Config{Encryption: "none", Concurrency: -2}, "concurrency"},
		{"scrypt factor", Config{Encryption: "passphrase", Passphrase: "x", ScryptWorkFactor: 31}, "work factor"},
		{"age without recipients", Config{Encryption: "age"}, "no recipients"},
		{"empty recipient", Config{Encryption: "age", Recipients: []string{""}}, "recipient #1 is empty"},
		{"not age1", Config{Encryption: "age", Recipients: []string{"ssh-ed25519 AAAAC3Nza"}}, `recipient #1 "ssh-ed25519 AAAAC3Nza" is not an age public key: it must start with age1`},
		{"bad checksum", Config{Encryption: "age", Recipients: []string{testRecipientA, testRecipientB[:len(testRecipientB)-1] + "q"}}, "recipient #2"},
		{"short key", Config{Encryption: "age", Recipients: []string{testRecipientA[:30]}}, "not a valid age public key"},
		{"secret key as recipient", Config{Encryption: "age", Recipients: []string{testIdentityA}}, "is a secret key"},
		{"duplicate recipient", Config{Encryption: "age", Recipients: []string{testRecipientA, strings.ToUpper(testRecipientA)}}, "repeats"},
		{"empty passphrase", Config{Encryption: "passphrase"}, "passphrase is empty"},
		{"passphrase and recipients", Config{Encryption: "passphrase", Passphrase: "x", Recipients: []string{testRecipientA}}, "cannot mix"},
		{"none with recipients", Config{Encryption: "none", Recipients: []string{testRecipientA}}, "encryption is none but recipients"},
		{"public key as identity", Config{Encryption: "none", Identities: []string{testRecipientA}}, "identity #1 is a public key"},
		{"garbage identity", Config{Encryption: "none", Identities: []string{testIdentityA, "hunter2"}}, "identity #2 is not an age secret key"},
		{"damaged identity", Config{Encryption: "none", Identities: []string{testIdentityA[:len(testIdentityA)-2]}}, "not a valid age secret key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrConfig containing %q", err, tc.want)
			}
			for _, secret := range []string{testIdentityA, testIdentityA[:len(testIdentityA)-2], "hunter2"} {
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("error %q reveals secret material", err)
				}
			}
		})
	}
}

func TestParseIdentityFile(t *testing.T) {
	file := "# created: 2024-05-01T10:00:00Z\r\n# public key: " + testRecipientA + "\r\n" + testIdentityA + "\r\n\n  " + testIdentityB + "  \n"
	ids, err := ParseIdentityFile(strings.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 2 || ids[0] != testIdentityA || ids[1] != testIdentityB {
		t.Fatalf("ids = %q", ids)
	}
	if _, err := ParseIdentityFile(strings.NewReader("# nothing\n\n")); err == nil || !strings.Contains(err.Error(), "no identities") {
		t.Fatalf("empty file: %v", err)
	}
	_, err = ParseIdentityFile(strings.NewReader(testIdentityA + "\n" + testIdentityB[:40] + "\n"))
	if err == nil || !strings.Contains(err.Error(), "line 2") || strings.Contains(err.Error(), testIdentityB[:40]) {
		t.Fatalf("bad line: %v", err)
	}
	_, err = ParseIdentityFile(strings.NewReader(strings.Repeat("#", identityFileLimit+10)))
	if err == nil {
		t.Fatal("oversized file accepted")
	}

	path := filepath.Join(t.TempDir(), "key.txt")
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	ids, err = LoadIdentities(path)
	if err != nil || len(ids) != 2 {
		t.Fatalf("LoadIdentities = %q, %v", ids, err)
	}
	if _, err := LoadIdentities(path + ".missing"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestFingerprintsAreStableAndPublic(t *testing.T) {
	c := mustNew(t, Config{Encryption: "age", Recipients: []string{testRecipientA, strings.ToUpper(testRecipientB)},
		Identities: []string{testIdentityB}})
	fps := c.Fingerprints()
	fa, err := Fingerprint(testRecipientA)
	if err != nil {
		t.Fatal(err)
	}
	fb, _ := Fingerprint(testRecipientB)
	if len(fps) != 2 || fps[0] != fa || fps[1] != fb || len(fa) != 16 || fa == fb {
		t.Fatalf("fingerprints %q, want [%s %s]", fps, fa, fb)
	}
	if got := c.IdentityFingerprints(); len(got) != 1 || got[0] != fb {
		t.Fatalf("identity fingerprints %q, want [%s]", got, fb)
	}
	// Pinned: pgharbor.json stores these, so they must never change.
	if fa != "5a8933bbb84010b9" {
		t.Fatalf("fingerprint of A is %s, want 5a8933bbb84010b9", fa)
	}
	if _, err := Fingerprint("age1nope"); err == nil {
		t.Fatal("Fingerprint accepted a bad recipient")
	}
	if fps := mustNew(t, testConfig("zstd", "passphrase")).Fingerprints(); len(fps) != 0 {
		t.Fatalf("passphrase mode has fingerprints %q", fps)
	}
}

func TestGenerateIdentity(t *testing.T) {
	id, rec, err := GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(id, "AGE-SECRET-KEY-1") || !strings.HasPrefix(rec, "age1") {
		t.Fatalf("%q %q", id[:16], rec)
	}
	if got, err := RecipientOf(id); err != nil || got != rec {
		t.Fatalf("RecipientOf = %q, %v; want %q", got, err, rec)
	}
	c := mustNew(t, Config{Encryption: "age", Recipients: []string{rec}, Identities: []string{id}})
	if got, err := c.Open(mustSeal(t, c, []byte("x"))); err != nil || string(got) != "x" {
		t.Fatalf("round trip with a generated key: %q %v", got, err)
	}
}

func mustSeal(t *testing.T, c *Codec, b []byte) []byte {
	t.Helper()
	s, err := c.Seal(b)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type closeTracker struct {
	bytes.Buffer
	closed bool
}

func (c *closeTracker) Close() error { c.closed = true; return nil }

func TestWriterCloseDoesNotCloseTheDestination(t *testing.T) {
	forEachCombo(t, func(t *testing.T, c *Codec) {
		var dst closeTracker
		w, err := c.NewWriter(&dst)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte("abc")); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if dst.closed {
			t.Fatal("Close closed the destination")
		}
		if err := w.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if _, err := w.Write([]byte("x")); err == nil {
			t.Fatal("Write after Close succeeded")
		}
	})
}

type failingWriter struct{ left int }

var errDisk = errors.New("disk full")

func (f *failingWriter) Write(p []byte) (int, error) {
	if len(p) > f.left {
		n := f.left
		f.left = 0
		return n, errDisk
	}
	f.left -= len(p)
	return len(p), nil
}

func TestWriterReportsDestinationErrors(t *testing.T) {
	forEachCombo(t, func(t *testing.T, c *Codec) {
		w, err := c.NewWriter(&failingWriter{left: 1000})
		if err != nil {
			t.Fatal(err)
		}
		_, werr := w.Write(randomData(1<<20, 13))
		cerr := w.Close()
		if !errors.Is(werr, errDisk) && !errors.Is(cerr, errDisk) {
			t.Fatalf("write err %v, close err %v: want %v", werr, cerr, errDisk)
		}
	})
}

type failingReader struct {
	r    io.Reader
	left int
}

var errNetwork = errors.New("connection reset")

func (f *failingReader) Read(p []byte) (int, error) {
	if f.left == 0 {
		return 0, errNetwork
	}
	p = p[:min(len(p), f.left)]
	n, err := f.r.Read(p)
	f.left -= n
	return n, err
}

func TestReaderPassesThroughIOErrorsAsNotCorrupt(t *testing.T) {
	payload := pgLikeData(300<<10, 14)
	forEachCombo(t, func(t *testing.T, c *Codec) {
		sealed := seal(t, c, payload)
		for _, at := range []int{3, 30, len(sealed) / 2, len(sealed) - 2} {
			r, err := c.NewReader(&failingReader{r: bytes.NewReader(sealed), left: at})
			if err == nil {
				_, err = io.ReadAll(r)
			}
			if !errors.Is(err, errNetwork) || errors.Is(err, ErrCorrupt) {
				t.Fatalf("I/O error at %d: err = %v, want %v and not ErrCorrupt", at, err, errNetwork)
			}
		}
	})
}

func TestCodecIsSafeForConcurrentUse(t *testing.T) {
	c := mustNew(t, testConfig("zstd", "age"))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5 {
				payload := pgLikeData(64<<10+g*1000+i, uint64(g*10+i))
				sealed, err := c.Seal(payload)
				if err != nil {
					errs <- err
					return
				}
				got, err := c.Open(sealed)
				if err != nil || !bytes.Equal(got, payload) {
					errs <- fmt.Errorf("goroutine %d object %d: %v", g, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestReaderCloseBeforeEOF(t *testing.T) {
	c := mustNew(t, testConfig("zstd", "none"))
	sealed := seal(t, c, pgLikeData(1<<20, 15))
	r, err := c.NewReader(bytes.NewReader(sealed))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(make([]byte, 10)); err == nil {
		t.Fatal("Read after Close succeeded")
	}
}

func TestHeaderAppendParse(t *testing.T) {
	h := Header{Version: FormatVersion, Compression: CompressionZstd, Encryption: EncryptionPassphrase}
	b := h.Append(nil)
	if string(b) != "PGHB\x01\x01\x02\x00" {
		t.Fatalf("encoded %q", b)
	}
	got, err := ParseHeader(b)
	if err != nil || got != h {
		t.Fatalf("ParseHeader = %+v, %v", got, err)
	}
	if h.Compression.String() != "zstd" || h.Encryption.String() != "passphrase" || Encryption(9).String() != "encryption(9)" {
		t.Fatal("String methods")
	}
}

func FuzzReadHeader(f *testing.F) {
	f.Add([]byte("PGHB\x01\x01\x01\x00"))
	f.Add([]byte("PGHB\x01\x00\x00\x00rest"))
	f.Add([]byte("PGHB\x02\x01\x01\x00"))
	f.Add([]byte("PGH"))
	f.Add([]byte{})
	f.Add(append([]byte("PGHB\x01\x00\x01\x01"), make([]byte, 32)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ReadHeader(bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, ErrUnknownFormat) && !errors.Is(err, ErrTruncated) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		// A header with a digest is longer than HeaderSize: compare all it encodes.
		enc := h.Append(nil)
		if len(enc) > len(b) || !bytes.Equal(enc, b[:len(enc)]) {
			t.Fatalf("header %+v re-encodes to %q, read from %q", h, enc, b)
		}
	})
}

func FuzzNewReader(f *testing.F) {
	cfg := Config{Encryption: "none", Identities: []string{testIdentityA}, Passphrase: testPassphrase, ScryptWorkFactor: testScrypt}
	reader, err := New(cfg)
	if err != nil {
		f.Fatal(err)
	}
	for _, comp := range compressions {
		for _, enc := range encryptions {
			c := mustNew(f, testConfig(comp, enc))
			for _, p := range [][]byte{nil, []byte("hello"), pgLikeData(3000, 1)} {
				f.Add(seal(f, c, p))
			}
		}
	}
	f.Add([]byte("PGHB\x01\x01\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := reader.NewReader(bytes.NewReader(b))
		if err != nil {
			return
		}
		defer r.Close()
		// Bound the work a hostile input can cause.
		_, _ = io.Copy(io.Discard, io.LimitReader(r, 64<<20))
	})
}

// The body of an encrypted object is a standard age file: `age -d` recovers header || inner.
func TestEncryptedBodyIsAStandardAgeFile(t *testing.T) {
	c := mustNew(t, testConfig("none", "age"))
	sealed := seal(t, c, []byte("payload"))
	id, err := age.ParseX25519Identity(testIdentityA)
	if err != nil {
		t.Fatal(err)
	}
	r, err := age.Decrypt(bytes.NewReader(sealed[HeaderSize:]), id)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if want := append(c.Header().Append(nil), "payload"...); !bytes.Equal(plain, want) {
		t.Fatalf("age plaintext %q, want %q", plain, want)
	}
}

// Passphrase mode with the repository's data key: objects are sealed to the key (header id
// 3, no scrypt stanza), a codec without the key says the passphrase is needed, another key
// is refused, and objects sealed with the passphrase alone stay readable.
func TestPassphraseDataKey(t *testing.T) {
	payload := pgLikeData(300<<10, 7)
	cfg := testConfig("zstd", "passphrase")
	plainPass := mustNew(t, cfg)
	older := seal(t, plainPass, payload)
	cfg.DataKey = testIdentityA
	withKey := mustNew(t, cfg)
	sealed := seal(t, withKey, payload)
	h, err := ReadHeader(bytes.NewReader(sealed))
	if err != nil || h.Encryption != EncryptionPassphraseKey || h.Encryption.String() != "passphrase" {
		t.Fatalf("header %+v, %v: want encryption id 3 named passphrase", h, err)
	}
	if bytes.Contains(sealed, []byte("scrypt")) {
		t.Fatal("an object sealed to the data key carries a scrypt stanza")
	}
	for name, obj := range map[string][]byte{"data key": sealed, "passphrase": older} {
		if got, err := open(withKey, obj); err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("%s object through the data-key codec: %v", name, err)
		}
	}
	if _, err := open(plainPass, sealed); !errors.Is(err, ErrNoIdentity) || !strings.Contains(err.Error(), "data key") {
		t.Fatalf("without the data key: %v, want ErrNoIdentity naming the data key", err)
	}
	cfg.DataKey = testIdentityB
	if _, err := open(mustNew(t, cfg), sealed); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("another data key: %v, want ErrWrongKey", err)
	}
	for _, bad := range []Config{
		{Encryption: "age", Recipients: []string{testRecipientA}, DataKey: testIdentityA},
		{Encryption: "none", DataKey: testIdentityA},
		{Encryption: "passphrase", Passphrase: "p", DataKey: "AGE-SECRET-KEY-1NOTAKEY"},
	} {
		if _, err := New(bad); !errors.Is(err, ErrConfig) {
			t.Errorf("New(%+v) = %v, want ErrConfig", bad.Encryption, err)
		}
	}
}

func TestSealAllMatchesTheStreamingWriter(t *testing.T) {
	payloads := map[string][]byte{
		"0B":          {},
		"1B":          {0x42},
		"1MiBRandom":  randomData(1<<20, 3),
		"4MiBPgLike":  pgLikeData(4<<20, 4),
		"9MiBPgLike":  pgLikeData(9<<20, 5), // more than the zstd window: not one segment
		"64KiBPgLike": pgLikeData(64<<10, 6),
	}
	forEachCombo(t, func(t *testing.T, c *Codec) {
		var scratch []byte
		for name, payload := range payloads {
			for _, stored := range []bool{false, true} {
				var buf bytes.Buffer
				var err error
				scratch, err = c.SealAll(&buf, payload, stored, scratch)
				if err != nil {
					t.Fatalf("%s stored=%v: %v", name, stored, err)
				}
				h, err := ParseHeader(buf.Bytes())
				if err != nil {
					t.Fatalf("%s: header: %v", name, err)
				}
				want := c.Header()
				if stored {
					want.Compression = CompressionNone
				}
				if h != want {
					t.Fatalf("%s stored=%v: header %+v, want %+v", name, stored, h, want)
				}
				got, err := open(c, buf.Bytes())
				if err != nil || !bytes.Equal(got, payload) {
					t.Fatalf("%s stored=%v: round trip: %d bytes in, %d out, %v", name, stored, len(payload), len(got), err)
				}
				streamed := seal(t, c, payload)
				if h.Compression == CompressionZstd && len(payload) > 1<<20 && buf.Len() > len(streamed)+len(streamed)/20 {
					t.Errorf("%s: SealAll made %d bytes, the streaming writer %d", name, buf.Len(), len(streamed))
				}
			}
		}
	})
}
