package codec

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// signingPair returns a writer codec (recipients + signing key, no identity) and a reader
// codec (identity + verify key) for one combination.
func signingPair(t *testing.T, comp, enc string) (writer, reader *Codec, verify string) {
	t.Helper()
	sk, vk, err := GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	wcfg := testConfig(comp, enc)
	wcfg.Identities = nil
	wcfg.SigningKey = sk
	rcfg := testConfig(comp, enc)
	rcfg.VerifyKeys = []string{vk}
	return mustNew(t, wcfg), mustNew(t, rcfg), vk
}

func openFor(c *Codec, sealed []byte, name string) ([]byte, error) {
	r, err := c.NewReaderFor(bytes.NewReader(sealed), name)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func signedCombos(t *testing.T, fn func(t *testing.T, w, r *Codec)) {
	for _, comp := range compressions {
		for _, enc := range []string{"none", "age"} {
			t.Run(comp+"_"+enc, func(t *testing.T) {
				w, r, _ := signingPair(t, comp, enc)
				fn(t, w, r)
			})
		}
	}
}

const objName = "prod/wal/0000000100000000/000000010000000000000005"

func TestSignedObjectVerifiesUnderItsName(t *testing.T) {
	payload := pgLikeData(300<<10, 1)
	signedCombos(t, func(t *testing.T, w, r *Codec) {
		sealed, _, err := w.SealDigest(payload)
		if err != nil {
			t.Fatal(err)
		}
		signed, err := w.Sign(sealed, objName)
		if err != nil {
			t.Fatal(err)
		}
		got, err := openFor(r, signed, objName)
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("open signed object: %d bytes, %v", len(got), err)
		}
		h, err := ReadHeader(bytes.NewReader(signed))
		if err != nil || !h.Signed || !h.HasDigest {
			t.Fatalf("header %+v, %v: want signed with digest", h, err)
		}
		// A reader without verify keys (signing off on readers, or an upgrade in progress)
		// still reads it.
		plainReader := mustNew(t, testConfig(w.Header().Compression.String(), w.Header().Encryption.String()))
		if got, err := openFor(plainReader, signed, "any name"); err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("reader without verify key: %d bytes, %v", len(got), err)
		}
		if got, err := open(r, signed); err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("unauthenticated read: %d bytes, %v", len(got), err)
		}
	})
}

func TestUnsignedObjectIsRefusedBeforeAnyByte(t *testing.T) {
	signedCombos(t, func(t *testing.T, w, r *Codec) {
		sealed := seal(t, w, []byte(`{"forged": true}`))
		rd, err := r.NewReaderFor(bytes.NewReader(sealed), objName)
		if !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), "no signature") {
			t.Fatalf("err = %v, want ErrUnauthenticated (no signature)", err)
		}
		if rd != nil {
			t.Fatal("a reader was returned for an unsigned object")
		}
	})
}

func TestObjectSignedWithAnotherKeyIsRefused(t *testing.T) {
	signedCombos(t, func(t *testing.T, w, r *Codec) {
		cfg := testConfig(w.Header().Compression.String(), w.Header().Encryption.String())
		cfg.Identities = nil
		cfg.SigningKey = mustSigningKey(t)
		forger := mustNew(t, cfg)
		signed, err := forger.Sign(seal(t, forger, []byte("forged")), objName)
		if err != nil {
			t.Fatal(err)
		}
		_, err = openFor(r, signed, objName)
		if !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), "not a configured verify key") {
			t.Fatalf("err = %v, want ErrUnauthenticated naming the unknown key", err)
		}
	})
}

func mustSigningKey(t *testing.T) string {
	t.Helper()
	sk, _, err := GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	return sk
}

func TestSignedObjectUnderAnotherNameIsRefused(t *testing.T) {
	signedCombos(t, func(t *testing.T, w, r *Codec) {
		signed, err := w.Sign(seal(t, w, []byte("segment 5")), objName)
		if err != nil {
			t.Fatal(err)
		}
		other := strings.Replace(objName, "05", "09", 1)
		_, err = openFor(r, signed, other)
		if !errors.Is(err, ErrUnauthenticated) || !strings.Contains(err.Error(), "another name") {
			t.Fatalf("err = %v, want ErrUnauthenticated (another name)", err)
		}
	})
}

func TestStrippedSignatureIsRefused(t *testing.T) {
	signedCombos(t, func(t *testing.T, w, r *Codec) {
		signed, err := w.Sign(seal(t, w, []byte("payload")), objName)
		if err != nil {
			t.Fatal(err)
		}
		stripped := bytes.Clone(signed[:len(signed)-SignatureSize])
		stripped[7] &^= FlagSigned
		// The stripped object is a valid unsigned object (the flag is outside the header
		// copy and the CRC, by design)...
		if got, err := open(w, stripped); w.Header().Encryption == EncryptionNone && (err != nil || string(got) != "payload") {
			t.Fatalf("stripped object no longer decodes: %v", err)
		}
		// ...and so it is refused as unsigned.
		if _, err := openFor(r, stripped, objName); !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("err = %v, want ErrUnauthenticated", err)
		}
		// The flag alone, without a trailer, is damage, not a signature.
		flagOnly := bytes.Clone(stripped)
		flagOnly[7] |= FlagSigned
		if _, err := openFor(r, flagOnly, objName); err == nil {
			t.Fatal("object with the signed flag but no trailer was accepted")
		}
	})
}

func TestTamperedOrTruncatedSignedObjectIsRefused(t *testing.T) {
	payload := pgLikeData(200<<10, 2)
	signedCombos(t, func(t *testing.T, w, r *Codec) {
		signed, err := w.Sign(seal(t, w, payload), objName)
		if err != nil {
			t.Fatal(err)
		}
		for _, cut := range []int{1, SignatureSize - 1, SignatureSize, SignatureSize + 1, len(signed) / 2} {
			if _, err := openFor(r, signed[:len(signed)-cut], objName); !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnauthenticated) {
				t.Errorf("cut %d bytes: err = %v, want ErrCorrupt or ErrUnauthenticated", cut, err)
			}
		}
		for _, pos := range []int{7, HeaderSize + 40, len(signed) / 2, len(signed) - SignatureSize - 1, len(signed) - SignatureSize, len(signed) - 1} {
			bad := bytes.Clone(signed)
			bad[pos] ^= 0x10
			if _, err := openFor(r, bad, objName); err == nil {
				t.Errorf("flipped byte %d of %d: accepted", pos, len(signed))
			}
		}
		if _, err := openFor(r, append(bytes.Clone(signed), 0), objName); err == nil {
			t.Error("trailing byte after the signature: accepted")
		}
	})
}

func TestSigningAnExistingObjectNeedsNoIdentity(t *testing.T) {
	payload := []byte("written before signing was turned on")
	signedCombos(t, func(t *testing.T, w, r *Codec) {
		old := seal(t, w, payload) // an object from before signing: flag clear, no trailer
		signed, err := w.Sign(bytes.Clone(old), objName)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(signed[:7], old[:7]) || !bytes.Equal(signed[8:len(old)], old[8:]) || len(signed) != len(old)+SignatureSize {
			t.Fatal("signing changed more than the flag and the trailer")
		}
		if got, err := openFor(r, signed, objName); err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("open: %q, %v", got, err)
		}
		// Signing again (a new key, or the same) replaces the trailer instead of stacking.
		again, err := w.Sign(bytes.Clone(signed), objName)
		if err != nil || len(again) != len(signed) {
			t.Fatalf("re-sign: %d bytes, %v", len(again), err)
		}
		if got, err := openFor(r, again, objName); err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("open re-signed: %q, %v", got, err)
		}
	})
}

func TestSignNeedsASigningKey(t *testing.T) {
	c := mustNew(t, testConfig("zstd", "none"))
	if _, err := c.Sign(seal(t, c, []byte("x")), objName); !errors.Is(err, ErrConfig) {
		t.Fatalf("err = %v, want ErrConfig", err)
	}
}

func TestSigningKeyEncoding(t *testing.T) {
	sk, vk, err := GenerateSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(sk, "PGHARBOR-SIGN-KEY-1") || !strings.HasPrefix(vk, "pgharbor-verify1") {
		t.Fatalf("keys %q… %q", sk[:20], vk)
	}
	if got, err := VerifyKeyOf(sk); err != nil || got != vk {
		t.Fatalf("VerifyKeyOf = %q, %v; want %q", got, err, vk)
	}
	if _, err := VerifyKeyID(vk); err != nil {
		t.Fatal(err)
	}
	// A typo is caught by the checksum.
	typo := []byte(vk)
	if i := len(typo) - 5; typo[i] == 'a' {
		typo[i] = 'b'
	} else {
		typo[i] = 'a'
	}
	if _, err := New(Config{Encryption: "none", VerifyKeys: []string{string(typo)}}); !errors.Is(err, ErrConfig) {
		t.Errorf("mistyped verify key: err = %v", err)
	}
	// The signing key in the verify slot is refused without being echoed.
	_, err = New(Config{Encryption: "none", VerifyKeys: []string{sk}})
	if !errors.Is(err, ErrConfig) || strings.Contains(err.Error(), sk[19:30]) {
		t.Errorf("signing key as verify key: err = %v", err)
	}
	if _, err := New(Config{Encryption: "none", SigningKey: vk}); !errors.Is(err, ErrConfig) {
		t.Errorf("verify key as signing key: err = %v", err)
	}
}

func TestLoadSigningKey(t *testing.T) {
	sk := mustSigningKey(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "signing.key")
	if err := os.WriteFile(p, []byte("# pgharbor write key\n"+sk+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadSigningKey(p); err != nil || got != sk {
		t.Fatalf("LoadSigningKey: %v", err)
	}
	two := filepath.Join(dir, "two.key")
	if err := os.WriteFile(two, []byte(sk+"\n"+mustSigningKey(t)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSigningKey(two); err == nil || !strings.Contains(err.Error(), "more than one") {
		t.Fatalf("two keys: err = %v", err)
	}
}

// Fixed test write key (made for these tests only) so that fuzz workers, which run in
// separate processes, can verify the seed corpus.
const (
	testSigningKey = "PGHARBOR-SIGN-KEY-1MNHAJT4WKBZYUHFSBDX3D27C6EZWIHRA555DNR6F7S5A5RHA5QAPDAMXDE"
	testVerifyKey  = "pgharbor-verify14kkrjitbwiffv63wx27nvak3u4igs4kvru4j2e2nuaqp7hrh5qdpe7htmi"
)

// FuzzNewReaderFor feeds damaged signed objects to an authenticating reader: it must never
// panic, and any payload it returns must be one that the write key signed. (Encryption is
// randomised, so fuzz workers cannot recompute the seeds' exact bytes; the payloads suffice.)
func FuzzNewReaderFor(f *testing.F) {
	reader := mustNew(f, Config{Encryption: "none", Identities: []string{testIdentityA}, VerifyKeys: []string{testVerifyKey}})
	payloads := [][]byte{nil, []byte("hello"), pgLikeData(3000, 1)}
	for _, comp := range compressions {
		for _, enc := range []string{"none", "age"} {
			cfg := testConfig(comp, enc)
			cfg.SigningKey = testSigningKey
			c := mustNew(f, cfg)
			for _, p := range payloads {
				signed, err := c.Sign(seal(f, c, p), objName)
				if err != nil {
					f.Fatal(err)
				}
				f.Add(signed)
			}
		}
	}
	f.Add([]byte("PGHB\x01\x00\x00\x02"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := openFor(reader, b, objName)
		if err != nil {
			return
		}
		for _, p := range payloads {
			if bytes.Equal(got, p) {
				return
			}
		}
		t.Fatalf("accepted a payload the write key never signed: %q", got[:min(len(got), 64)])
	})
}

// An ObjectSigner fed a sealed object in pieces of any size, the header's flag byte split
// or not, writes exactly what Sign makes of the whole object, and readers that verify take it.
func TestObjectSignerWritesWhatSignMakes(t *testing.T) {
	payload := pgLikeData(200<<10, 2)
	signedCombos(t, func(t *testing.T, w, r *Codec) {
		var sealed bytes.Buffer
		ow, err := w.NewWriter(&sealed)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ow.Write(payload); err != nil {
			t.Fatal(err)
		}
		if err := ow.Close(); err != nil {
			t.Fatal(err)
		}
		want, err := w.Sign(bytes.Clone(sealed.Bytes()), objName)
		if err != nil {
			t.Fatal(err)
		}
		orig := bytes.Clone(sealed.Bytes())
		for _, piece := range []int{1, 3, 7, 8, 4096, sealed.Len()} {
			var out bytes.Buffer
			s, err := w.NewObjectSigner(&out, objName)
			if err != nil {
				t.Fatal(err)
			}
			src := sealed.Bytes()
			for len(src) > 0 {
				n := min(piece, len(src))
				if _, err := s.Write(src[:n]); err != nil {
					t.Fatal(err)
				}
				src = src[n:]
			}
			if err := s.Finish(); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), want) {
				t.Fatalf("pieces of %d bytes: %d bytes signed, not Sign's %d", piece, out.Len(), len(want))
			}
		}
		if !bytes.Equal(sealed.Bytes(), orig) {
			t.Fatal("the signer changed the bytes written to it")
		}
		if got, err := openFor(r, want, objName); err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("open: %d bytes, %v", len(got), err)
		}
	})
	if _, err := mustNew(t, testConfig("zstd", "none")).NewObjectSigner(io.Discard, objName); !errors.Is(err, ErrConfig) {
		t.Fatalf("signer without a signing key: %v, want ErrConfig", err)
	}
}
