package codec

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"filippo.io/age"
)

// GenerateIdentity makes a new X25519 key pair: identity is the secret
// "AGE-SECRET-KEY-1…" string (keep it off backup hosts), recipient the public "age1…" one.
func GenerateIdentity() (identity, recipient string, err error) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return "", "", fmt.Errorf("generate age identity: %w", err)
	}
	return id.String(), id.Recipient().String(), nil
}

// RecipientOf returns the public recipient of an age identity.
func RecipientOf(identity string) (string, error) {
	_, rec, err := parseIdentity(strings.TrimSpace(identity))
	return rec, err
}

// Fingerprint returns a short stable name for a recipient: the first 16 hex digits of
// SHA-256 over its canonical (lower-case Bech32) encoding. It reveals nothing secret.
func Fingerprint(recipient string) (string, error) {
	if _, err := parseRecipient(recipient); err != nil {
		return "", err
	}
	return fingerprint(canonicalRecipient(recipient)), nil
}

func fingerprint(canonical string) string {
	sum := sha256.Sum256([]byte(canonical))
	return hex.EncodeToString(sum[:8])
}

func canonicalRecipient(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

// shorten quotes s for an error message without flooding it.
func shorten(s string) string {
	if len(s) > 24 {
		s = s[:20] + "…"
	}
	return fmt.Sprintf("%q", s)
}

func looksSecret(s string) bool {
	return strings.HasPrefix(strings.ToUpper(strings.TrimSpace(s)), "AGE-SECRET-KEY-")
}

func parseRecipient(s string) (age.Recipient, error) {
	s = strings.TrimSpace(s)
	switch {
	case looksSecret(s):
		// Never echo it: it is a secret key in the wrong place.
		return nil, errors.New("is a secret key (AGE-SECRET-KEY-…), not a recipient: put it in identities on restore hosts only, and use its public age1… key here")
	case s == "":
		return nil, errors.New("is empty (must be an age public key starting with age1)")
	case !strings.HasPrefix(strings.ToLower(s), "age1"):
		return nil, fmt.Errorf("%s is not an age public key: it must start with age1", shorten(s))
	}
	lower := strings.ToLower(s)
	var (
		r   age.Recipient
		err error
	)
	if strings.HasPrefix(lower, "age1pq1") {
		r, err = age.ParseHybridRecipient(lower)
	} else {
		r, err = age.ParseX25519Recipient(lower)
	}
	if err != nil {
		return nil, fmt.Errorf("%s is not a valid age public key (wrong length or checksum; was it copied completely?)", shorten(s))
	}
	return r, nil
}

func parseRecipients(list []string) ([]age.Recipient, error) {
	var recs []age.Recipient
	seen := map[string]int{}
	pq := -1
	for i, s := range list {
		r, err := parseRecipient(s)
		if err != nil {
			return nil, fmt.Errorf("%w: recipient #%d %w", ErrConfig, i+1, err)
		}
		canon := canonicalRecipient(s)
		if j, ok := seen[canon]; ok {
			return nil, fmt.Errorf("%w: recipient #%d repeats recipient #%d", ErrConfig, i+1, j+1)
		}
		seen[canon] = i
		isPQ := 0
		if strings.HasPrefix(canon, "age1pq1") {
			isPQ = 1
		}
		if pq >= 0 && pq != isPQ {
			return nil, fmt.Errorf("%w: recipient #%d: post-quantum (age1pq1…) and classic (age1…) recipients cannot be mixed", ErrConfig, i+1)
		}
		pq = isPQ
		recs = append(recs, r)
	}
	return recs, nil
}

// parseIdentity parses one secret key. Errors never include the key.
func parseIdentity(s string) (age.Identity, string, error) {
	upper := strings.ToUpper(s)
	switch {
	case s == "":
		return nil, "", errors.New("is empty")
	case strings.HasPrefix(strings.ToLower(s), "age1"):
		return nil, "", errors.New("is a public key (age1…); identities must be secret keys starting with AGE-SECRET-KEY-1")
	case strings.HasPrefix(upper, "AGE-SECRET-KEY-PQ-1"):
		id, err := age.ParseHybridIdentity(upper)
		if err != nil {
			return nil, "", errors.New("is not a valid age post-quantum secret key (wrong length or checksum)")
		}
		return id, id.Recipient().String(), nil
	case strings.HasPrefix(upper, "AGE-SECRET-KEY-1"):
		id, err := age.ParseX25519Identity(upper)
		if err != nil {
			return nil, "", errors.New("is not a valid age secret key (wrong length or checksum; was it copied completely?)")
		}
		return id, id.Recipient().String(), nil
	}
	return nil, "", errors.New("is not an age secret key: it must start with AGE-SECRET-KEY-1")
}

// ParseIdentityFile reads an age identity file as written by age-keygen or
// `pgharbor key generate`: one secret key per line, blank lines and lines starting with
// "#" ignored. It returns the keys as strings for Config.Identities.
func ParseIdentityFile(r io.Reader) ([]string, error) {
	lr := &io.LimitedReader{R: r, N: identityFileLimit + 1}
	sc := bufio.NewScanner(lr)
	var ids []string
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		if _, _, err := parseIdentity(s); err != nil {
			return nil, fmt.Errorf("identity file line %d %w", line, err)
		}
		ids = append(ids, s)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read identity file: %w", err)
	}
	if lr.N == 0 {
		return nil, fmt.Errorf("identity file is larger than %d bytes", identityFileLimit)
	}
	if len(ids) == 0 {
		return nil, errors.New("identity file holds no identities (expected lines starting with AGE-SECRET-KEY-1)")
	}
	return ids, nil
}

// LoadIdentities reads the identity file at path (see ParseIdentityFile).
func LoadIdentities(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open identity file: %w", err)
	}
	defer f.Close()
	ids, err := ParseIdentityFile(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ids, nil
}
