package pool

import (
	"bufio"
	"crypto/hmac"
	"crypto/md5"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"

	secretfile "github.com/pgharbor/pgharbor/internal/secret"
)

// secret is what the pool knows about one user's password: the plaintext, PostgreSQL's md5
// hash ("md5" + md5(password + user)) or a SCRAM-SHA-256 verifier as in pg_authid.
type secret struct {
	plain string
	md5   string
	scram *scramKeys

	once    sync.Once
	derived *scramKeys
	err     error
}

// scramKeys is a SCRAM-SHA-256 verifier. clientKey is known only when derived from a
// plaintext password or recovered from a client's proof (SCRAM pass-through).
type scramKeys struct {
	iter      int
	salt      []byte
	storedKey []byte
	serverKey []byte
	clientKey []byte
}

const scramIterations = 4096

func parseSecret(s string) (*secret, error) {
	switch {
	case strings.HasPrefix(s, "SCRAM-SHA-256$"):
		k, err := parseSCRAMSecret(s)
		if err != nil {
			return nil, err
		}
		return &secret{scram: k}, nil
	case len(s) == 35 && strings.HasPrefix(s, "md5") && isHex(s[3:]):
		return &secret{md5: s}, nil
	default:
		return &secret{plain: s}, nil
	}
}

func isHex(s string) bool {
	_, err := hex.DecodeString(s)
	return err == nil
}

// parseSCRAMSecret parses "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>".
func parseSCRAMSecret(s string) (*scramKeys, error) {
	rest := strings.TrimPrefix(s, "SCRAM-SHA-256$")
	iterSalt, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return nil, errors.New("SCRAM secret: missing '$' before the keys")
	}
	iterS, saltS, ok1 := strings.Cut(iterSalt, ":")
	storedS, serverS, ok2 := strings.Cut(keys, ":")
	if !ok1 || !ok2 {
		return nil, errors.New("SCRAM secret: want SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>")
	}
	iter, err := strconv.Atoi(iterS)
	if err != nil || iter <= 0 {
		return nil, fmt.Errorf("SCRAM secret: bad iteration count %q", iterS)
	}
	k := &scramKeys{iter: iter}
	if k.salt, err = base64.StdEncoding.DecodeString(saltS); err != nil {
		return nil, fmt.Errorf("SCRAM secret: salt: %w", err)
	}
	if k.storedKey, err = base64.StdEncoding.DecodeString(storedS); err != nil || len(k.storedKey) != sha256.Size {
		return nil, errors.New("SCRAM secret: StoredKey is not 32 base64 bytes")
	}
	if k.serverKey, err = base64.StdEncoding.DecodeString(serverS); err != nil || len(k.serverKey) != sha256.Size {
		return nil, errors.New("SCRAM secret: ServerKey is not 32 base64 bytes")
	}
	return k, nil
}

// scramFromPassword derives a verifier (with its client key) from a password.
func scramFromPassword(password string, salt []byte, iter int) (*scramKeys, error) {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iter, sha256.Size)
	if err != nil {
		return nil, fmt.Errorf("SCRAM: derive key: %w", err)
	}
	ck := hmacSum(salted, []byte("Client Key"))
	sk := sha256.Sum256(ck)
	return &scramKeys{iter: iter, salt: salt, storedKey: sk[:], serverKey: hmacSum(salted, []byte("Server Key")), clientKey: ck}, nil
}

// SCRAMSecret returns the pg_authid-style SCRAM-SHA-256 verifier of password with a fresh
// salt, for auth files.
func SCRAMSecret(password string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	k, err := scramFromPassword(password, salt, scramIterations)
	if err != nil {
		return "", err
	}
	b := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", k.iter, b(k.salt), b(k.storedKey), b(k.serverKey)), nil
}

// keys returns the SCRAM verifier to check clients against.
func (s *secret) keys() (*scramKeys, error) {
	if s.scram != nil {
		return s.scram, nil
	}
	if s.md5 != "" {
		return nil, errors.New("the stored password is an md5 hash, which cannot verify SCRAM; store the SCRAM secret or use auth_type md5")
	}
	s.once.Do(func() {
		salt := make([]byte, 16)
		if _, err := rand.Read(salt); err != nil {
			s.err = err
			return
		}
		s.derived, s.err = scramFromPassword(s.plain, salt, scramIterations)
	})
	return s.derived, s.err
}

func hmacSum(key, msg []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(msg)
	return h.Sum(nil)
}

func md5Hex(parts ...[]byte) string {
	h := md5.New()
	for _, p := range parts {
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// md5Hash returns "md5" + md5(password + user), as pg_authid stores it.
func md5Hash(password, user string) string { return "md5" + md5Hex([]byte(password), []byte(user)) }

// md5Response is what a client sends for an md5 challenge: "md5" + md5(md5hash[3:] + salt).
func md5Response(hash string, salt [4]byte) string {
	return "md5" + md5Hex([]byte(hash[3:]), salt[:])
}

// userMD5 returns the stored md5 hash for user, if the secret allows md5.
func (s *secret) userMD5(user string) (string, bool) {
	switch {
	case s.md5 != "":
		return s.md5, true
	case s.scram != nil:
		return "", false
	default:
		return md5Hash(s.plain, user), true
	}
}

// authFile is a parsed PgBouncer-style userlist: lines of `"user" "secret"`.
type authFile map[string]*secret

// loadAuthFile reads auth_file, refusing one that others can read (its secrets log in as
// its users, or let anyone try passwords offline against a SCRAM verifier).
func loadAuthFile(path string, log *slog.Logger) (authFile, error) {
	if path == "" {
		return authFile{}, nil
	}
	warning, err := secretfile.CheckServiceFile(path, "auth_file")
	if err != nil {
		return nil, err
	}
	if warning != "" {
		log.Warn(warning)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("auth_file: %w", err)
	}
	defer f.Close()
	af, err := parseAuthFile(f)
	if err != nil {
		return nil, fmt.Errorf("auth_file %s: %w", path, err)
	}
	return af, nil
}

func parseAuthFile(r io.Reader) (authFile, error) {
	af := authFile{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == ';' || text[0] == '#' {
			continue
		}
		user, rest, err := quotedToken(text)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		pass, _, err := quotedToken(strings.TrimLeft(rest, " \t"))
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		s, err := parseSecret(pass)
		if err != nil {
			return nil, fmt.Errorf("line %d (user %q): %w", line, user, err)
		}
		af[user] = s
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return af, nil
}

// quotedToken reads `"..."` ("" inside is a quote) from the start of s.
func quotedToken(s string) (string, string, error) {
	if !strings.HasPrefix(s, `"`) {
		return "", "", errors.New(`want "user" "password"`)
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		if s[i] != '"' {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == '"' {
			b.WriteByte('"')
			i++
			continue
		}
		return b.String(), s[i+1:], nil
	}
	return "", "", errors.New("unterminated quote")
}

// --- SCRAM-SHA-256 as the server (RFC 5802, RFC 7677), towards clients ---

// scramServer is one server-side SCRAM exchange.
type scramServer struct {
	keys            *scramKeys
	gs2Header       string
	clientFirstBare string
	serverFirst     string
	nonce           string
}

// first handles client-first-message and returns server-first-message.
func (s *scramServer) first(msg []byte) (string, error) {
	m := string(msg)
	// gs2-header: cbind-flag "," [authzid] ","
	var rest string
	switch {
	case strings.HasPrefix(m, "n,"), strings.HasPrefix(m, "y,"):
		rest = m[2:]
	case strings.HasPrefix(m, "p="):
		return "", errors.New("SCRAM: channel binding was not offered")
	default:
		return "", errors.New("SCRAM: malformed client-first-message")
	}
	authz, bare, ok := strings.Cut(rest, ",")
	if !ok || authz != "" {
		return "", errors.New("SCRAM: malformed client-first-message (authzid is not supported)")
	}
	s.gs2Header = m[:len(m)-len(bare)]
	s.clientFirstBare = bare
	var cnonce string
	for _, attr := range strings.Split(bare, ",") {
		if strings.HasPrefix(attr, "r=") {
			cnonce = attr[2:]
		}
		if strings.HasPrefix(attr, "m=") {
			return "", errors.New("SCRAM: mandatory extensions are not supported")
		}
	}
	if cnonce == "" || !strings.HasPrefix(bare, "n=") {
		return "", errors.New("SCRAM: malformed client-first-message (no nonce)")
	}
	snonce := make([]byte, 18)
	if _, err := rand.Read(snonce); err != nil {
		return "", err
	}
	s.nonce = cnonce + base64.StdEncoding.EncodeToString(snonce)
	s.serverFirst = fmt.Sprintf("r=%s,s=%s,i=%d", s.nonce, base64.StdEncoding.EncodeToString(s.keys.salt), s.keys.iter)
	return s.serverFirst, nil
}

// final checks client-final-message and returns server-final-message and the client key
// recovered from the proof.
func (s *scramServer) final(msg []byte) (string, []byte, error) {
	m := string(msg)
	idx := strings.LastIndex(m, ",p=")
	if idx < 0 {
		return "", nil, errors.New("SCRAM: malformed client-final-message (no proof)")
	}
	withoutProof := m[:idx]
	proof, err := base64.StdEncoding.DecodeString(m[idx+3:])
	if err != nil || len(proof) != sha256.Size {
		return "", nil, errors.New("SCRAM: malformed proof")
	}
	var cbind, nonce string
	for _, attr := range strings.Split(withoutProof, ",") {
		switch {
		case strings.HasPrefix(attr, "c="):
			cbind = attr[2:]
		case strings.HasPrefix(attr, "r="):
			nonce = attr[2:]
		}
	}
	if cbind != base64.StdEncoding.EncodeToString([]byte(s.gs2Header)) {
		return "", nil, errors.New("SCRAM: channel binding data does not match")
	}
	if nonce != s.nonce {
		return "", nil, errors.New("SCRAM: nonce does not match")
	}
	authMsg := []byte(s.clientFirstBare + "," + s.serverFirst + "," + withoutProof)
	sig := hmacSum(s.keys.storedKey, authMsg)
	clientKey := make([]byte, sha256.Size)
	for i := range clientKey {
		clientKey[i] = proof[i] ^ sig[i]
	}
	stored := sha256.Sum256(clientKey)
	if subtle.ConstantTimeCompare(stored[:], s.keys.storedKey) != 1 {
		return "", nil, errWrongPassword
	}
	return "v=" + base64.StdEncoding.EncodeToString(hmacSum(s.keys.serverKey, authMsg)), clientKey, nil
}

var errWrongPassword = errors.New("password authentication failed")

// --- SCRAM-SHA-256 as the client, towards servers ---

// scramClient authenticates to PostgreSQL with a password or with known SCRAM keys whose
// client key is known (pass-through of a client's SCRAM login).
type scramClient struct {
	password        string
	keys            *scramKeys
	clientFirstBare string
	nonce           string
	authMsg         []byte
	serverKey       []byte
}

func (c *scramClient) first() ([]byte, error) {
	b := make([]byte, 18)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	c.nonce = base64.StdEncoding.EncodeToString(b)
	c.clientFirstBare = "n=,r=" + c.nonce
	return []byte("n,," + c.clientFirstBare), nil
}

func (c *scramClient) final(serverFirst []byte) ([]byte, error) {
	var nonce, saltS, iterS string
	for _, attr := range strings.Split(string(serverFirst), ",") {
		switch {
		case strings.HasPrefix(attr, "r="):
			nonce = attr[2:]
		case strings.HasPrefix(attr, "s="):
			saltS = attr[2:]
		case strings.HasPrefix(attr, "i="):
			iterS = attr[2:]
		}
	}
	if !strings.HasPrefix(nonce, c.nonce) || len(nonce) == len(c.nonce) {
		return nil, errors.New("SCRAM: server nonce does not extend ours")
	}
	salt, err := base64.StdEncoding.DecodeString(saltS)
	if err != nil {
		return nil, fmt.Errorf("SCRAM: server salt: %w", err)
	}
	iter, err := strconv.Atoi(iterS)
	if err != nil || iter <= 0 {
		return nil, errors.New("SCRAM: bad server iteration count")
	}
	var clientKey, storedKey []byte
	switch {
	case c.password != "":
		k, err := scramFromPassword(c.password, salt, iter)
		if err != nil {
			return nil, err
		}
		clientKey, storedKey, c.serverKey = k.clientKey, k.storedKey, k.serverKey
	case c.keys != nil && c.keys.clientKey != nil:
		if c.keys.iter != iter || !hmac.Equal(c.keys.salt, salt) {
			return nil, errors.New("SCRAM pass-through: the server's salt or iteration count differ from the auth secret; the secret in auth_file is not the server's")
		}
		clientKey, storedKey, c.serverKey = c.keys.clientKey, c.keys.storedKey, c.keys.serverKey
	default:
		return nil, errors.New("SCRAM: no password for the server (put the plaintext password or the server's SCRAM secret in auth_file, or set server_password)")
	}
	withoutProof := "c=biws,r=" + nonce
	c.authMsg = []byte(c.clientFirstBare + "," + string(serverFirst) + "," + withoutProof)
	sig := hmacSum(storedKey, c.authMsg)
	proof := make([]byte, len(clientKey))
	for i := range proof {
		proof[i] = clientKey[i] ^ sig[i]
	}
	return []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof)), nil
}

func (c *scramClient) verify(serverFinal []byte) error {
	want := "v=" + base64.StdEncoding.EncodeToString(hmacSum(c.serverKey, c.authMsg))
	if subtle.ConstantTimeCompare([]byte(want), serverFinal) != 1 {
		return errors.New("SCRAM: the server's signature is wrong (not the server we know the password of)")
	}
	return nil
}
