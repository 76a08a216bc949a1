//! Private keys on a PKCS#11 token (`[keys.pkcs11]`): an HSM, a smart card or SoftHSM.
//!
//! The private key never leaves the token: every signature and every key unwrap is a call into
//! the module (`C_Sign`, `C_Decrypt`, `C_DeriveKey`). cachet hashes in-process and sends the
//! token only the digest (CKM_RSA_PKCS with a DigestInfo, CKM_RSA_PKCS_PSS, CKM_ECDSA), the
//! mechanisms every token implements.
//!
//! Shape:
//! - one `Module` per library path per process (`C_Initialize` may run only once; a reload
//!   reuses it). When the token goes away or restarts, the module is finalized and initialized
//!   again (a new *generation*), so a re-created token is found again; sessions of an old
//!   generation are never touched again (they were opened "no close on drop": `C_Finalize`
//!   closed them).
//! - one [`Token`] per `[keys.pkcs11]` (label + PIN), with a bounded pool of sessions
//!   (`keys.pkcs11.sessions`); a caller waits at most [`SESSION_WAIT`] for one.
//! - a token that is gone, restarting, busy or refusing is [`KeyError::Unavailable`]: the
//!   message waits (4xx, deferred) and is tried again; it never leaves unsigned. Only a request
//!   the token cannot serve with this key (mechanism, key type, bad ciphertext) is
//!   [`KeyError::Failed`]. A PIN the token refused is never tried again until a reload (a wrong
//!   PIN retried per message would lock the token).
//!
//! PKCS#11 calls block: callers run on the blocking pool (the scheduler seals there).
//!
//! Secrets: the PIN is kept in memory (for re-login after a token restart) in a
//! `secrecy::SecretString`, wiped on drop; it is never logged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{
    Attribute, AttributeType, CertificateType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use super::private_key::{Decrypt, KeyError, OaepHash, PrivateKey, SignatureScheme};

/// How long a caller waits for a free session before the message is deferred.
pub const SESSION_WAIT: Duration = Duration::from_secs(30);

/// The `[keys.pkcs11]` settings, with the PIN already read.
pub struct TokenConfig {
    pub module: PathBuf,
    /// CKA_LABEL of the token (CK_TOKEN_INFO.label, blank-padded by the token).
    pub label: String,
    pub pin: Zeroizing<String>,
    /// Most sessions open at once.
    pub sessions: usize,
}

/// A loaded PKCS#11 library, shared by every [`Token`] that names the same path.
struct Module {
    path: PathBuf,
    /// `None` after a failed re-initialisation; the next operation tries again.
    ctx: RwLock<Option<Pkcs11>>,
    /// Bumped by every re-initialisation: sessions, logins and object handles of an older
    /// generation are void.
    generation: AtomicU64,
}

static MODULES: Mutex<Vec<(PathBuf, Weak<Module>)>> = Mutex::new(Vec::new());

fn init(path: &Path) -> Result<Pkcs11, String> {
    let ctx = Pkcs11::new(path).map_err(|e| format!("cannot load {}: {e}", path.display()))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(ctx),
        Err(e) => Err(format!("{}: C_Initialize: {e}", path.display())),
    }
}

impl Module {
    /// The process-wide module for `path`, loaded and initialised on first use.
    fn get(path: &Path) -> Result<Arc<Module>, String> {
        let mut all = MODULES.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|(_, w)| w.strong_count() > 0);
        if let Some(m) = all
            .iter()
            .find(|(p, _)| p == path)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(m);
        }
        let m = Arc::new(Module {
            path: path.to_path_buf(),
            ctx: RwLock::new(Some(init(path)?)),
            generation: AtomicU64::new(1),
        });
        all.push((path.to_path_buf(), Arc::downgrade(&m)));
        Ok(m)
    }

    /// Finalize and initialise again, unless someone already did since generation `seen`.
    fn reinit(&self, seen: u64) {
        let mut ctx = self.ctx.write().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::SeqCst) != seen {
            return;
        }
        if let Some(old) = ctx.take() {
            let _ = old.finalize();
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        match init(&self.path) {
            Ok(c) => *ctx = Some(c),
            Err(e) => tracing::warn!(error = %e, "PKCS#11 module re-initialisation failed"),
        }
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.get_mut().ok().and_then(Option::take) {
            let _ = ctx.finalize();
        }
    }
}

struct Pool {
    idle: Vec<(u64, Session)>,
    /// Sessions checked out or idle (at most `max`).
    open: usize,
}

/// One token (by label) with its PIN and session pool.
pub struct Token {
    module: Arc<Module>,
    pub label: String,
    pin: AuthPin,
    max: usize,
    pool: Mutex<Pool>,
    freed: Condvar,
    /// Generation in which this token last logged in (0: never).
    login_gen: AtomicU64,
    /// Set when the token said CKR_PIN_INCORRECT / PIN_LOCKED: never try that PIN again.
    pin_refused: AtomicBool,
    /// CKA_ID -> private key handle, per generation.
    handles: Mutex<HashMap<Vec<u8>, (u64, ObjectHandle)>>,
}

impl Drop for Token {
    /// Close the idle sessions (a reload drops the old runtime's token): they were opened "no
    /// close on drop", so without this each reload would leave `sessions` sessions open in the
    /// token, and HSMs have few. Sessions of an older generation were closed by C_Finalize.
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.pool.get_mut().unwrap_or_else(|p| p.into_inner()).idle);
        let _ctx = self.module.ctx.read().unwrap_or_else(|p| p.into_inner());
        let generation = self.module.generation.load(Ordering::SeqCst);
        for (g, session) in idle {
            if g == generation {
                let _ = session.close();
            }
        }
    }
}

/// A private key, certificate or public key object on the token.
#[derive(Debug, Clone)]
pub struct TokenObject {
    pub id: Vec<u8>,
    pub label: String,
    /// RSA or EC for keys.
    pub key_type: Option<KeyType>,
    /// CKA_VALUE of a certificate.
    pub value: Vec<u8>,
}

/// The errors that mean "the session or the token is gone": try once more after
/// re-initialising the module.
fn is_gone(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::GeneralError
                | RvError::CryptokiNotInitialized
                | RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid
                | RvError::SlotIdInvalid
                | RvError::UserNotLoggedIn,
            _
        )
    )
}

/// Errors that say the request does not suit this key or token (a mechanism it lacks, data
/// that is not for this key): retrying cannot help, so they are [`KeyError::Failed`].
fn is_unsuitable(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::ArgumentsBad
                | RvError::DataInvalid
                | RvError::DataLenRange
                | RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::KeyTypeInconsistent
                | RvError::KeyFunctionNotPermitted
                | RvError::MechanismInvalid
                | RvError::MechanismParamInvalid,
            _
        )
    )
}

fn pin_refused(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired | RvError::PinInvalid,
            _
        )
    )
}

/// Why an operation failed, before classification.
enum OpError {
    Ck(CkError),
    Other(String),
}

impl From<CkError> for OpError {
    fn from(e: CkError) -> Self {
        OpError::Ck(e)
    }
}

impl Token {
    /// Load the module, find the token and log in: the errors `cachet check` shows.
    pub fn open(cfg: &TokenConfig) -> Result<Arc<Token>, String> {
        if cfg.pin.is_empty() {
            return Err("the PIN file is empty".into());
        }
        let module = Module::get(&cfg.module)?;
        let token = Arc::new(Token {
            module,
            label: cfg.label.clone(),
            pin: AuthPin::new(cfg.pin.as_str().into()),
            max: cfg.sessions.max(1),
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
            login_gen: AtomicU64::new(0),
            pin_refused: AtomicBool::new(false),
            handles: Mutex::new(HashMap::new()),
        });
        token.run(|_, _| Ok(())).map_err(|e| match e {
            KeyError::Unavailable(m) | KeyError::Failed(m) => m,
        })?;
        Ok(token)
    }

    /// Find the slot whose token carries our label.
    fn slot(&self, ctx: &Pkcs11) -> Result<cryptoki::slot::Slot, OpError> {
        for slot in ctx.get_slots_with_token()? {
            if let Ok(info) = ctx.get_token_info(slot)
                && info.label().trim_end() == self.label
            {
                return Ok(slot);
            }
        }
        Err(OpError::Other(format!(
            "no token labelled {:?} in {}",
            self.label,
            self.module.path.display()
        )))
    }

    /// Take a session from the pool (or the right to open one), waiting at most [`SESSION_WAIT`].
    fn reserve(&self) -> Result<Option<(u64, Session)>, KeyError> {
        let deadline = Instant::now() + SESSION_WAIT;
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(s) = pool.idle.pop() {
                return Ok(Some(s));
            }
            if pool.open < self.max {
                pool.open += 1;
                return Ok(None);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(KeyError::Unavailable(format!(
                    "all {} sessions of token {:?} stayed busy for {}s",
                    self.max,
                    self.label,
                    SESSION_WAIT.as_secs()
                )));
            }
            pool = self
                .freed
                .wait_timeout(pool, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Give a session back (`Some`) or its place (`None`: it was broken or never opened).
    fn release(&self, session: Option<(u64, Session)>) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        match session {
            Some(s) => pool.idle.push(s),
            None => pool.open = pool.open.saturating_sub(1),
        }
        drop(pool);
        self.freed.notify_one();
    }

    fn login(&self, session: &Session, generation: u64) -> Result<(), OpError> {
        if self.login_gen.load(Ordering::SeqCst) == generation {
            return Ok(());
        }
        if self.pin_refused.load(Ordering::SeqCst) {
            return Err(OpError::Other(format!(
                "token {:?} refused the PIN earlier; fix keys.pkcs11.pin_file and reload",
                self.label
            )));
        }
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                self.login_gen.store(generation, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                if pin_refused(&e) {
                    self.pin_refused.store(true, Ordering::SeqCst);
                }
                Err(OpError::Ck(e))
            }
        }
    }

    /// One attempt of `op` on a logged-in session of the current generation.
    fn attempt<T>(
        &self,
        op: &impl Fn(&Session, u64) -> Result<T, OpError>,
    ) -> Result<T, (u64, OpError)> {
        let reserved = self
            .reserve()
            .map_err(|e| (0, OpError::Other(e.to_string())))?;
        let ctx_guard = self.module.ctx.read().unwrap_or_else(|p| p.into_inner());
        let generation = self.module.generation.load(Ordering::SeqCst);
        let Some(ctx) = ctx_guard.as_ref() else {
            self.release(None);
            return Err((
                generation,
                OpError::Other(format!(
                    "PKCS#11 module {} is not initialised",
                    self.module.path.display()
                )),
            ));
        };
        // A pooled session from an older generation is void: drop it without a call.
        let session = match reserved {
            Some((g, s)) if g == generation => Ok(s),
            _ => self
                .slot(ctx)
                .and_then(|slot| ctx.open_rw_session_no_drop(slot).map_err(OpError::from)),
        };
        let session = match session {
            Ok(s) => s,
            Err(e) => {
                drop(ctx_guard);
                self.release(None);
                return Err((generation, e));
            }
        };
        let result = self
            .login(&session, generation)
            .and_then(|()| op(&session, generation));
        match &result {
            Err(OpError::Ck(e)) if is_gone(e) => {
                // Close it while no re-initialisation can run (we hold the read lock), so a
                // session that still exists in the token is not left open.
                let _ = session.close();
                drop(ctx_guard);
                self.release(None);
            }
            _ => {
                drop(ctx_guard);
                self.release(Some((generation, session)));
            }
        }
        result.map_err(|e| (generation, e))
    }

    /// Run `op` on a logged-in session; after a "gone" error, re-login or re-initialise the
    /// module and try once more. A request the token cannot serve with this key is
    /// [`KeyError::Failed`]; every other failure is [`KeyError::Unavailable`].
    fn run<T>(&self, op: impl Fn(&Session, u64) -> Result<T, OpError>) -> Result<T, KeyError> {
        let mut last = String::new();
        for round in 0..2 {
            match self.attempt(&op) {
                Ok(v) => return Ok(v),
                Err((_, OpError::Ck(e))) if is_unsuitable(&e) => {
                    return Err(KeyError::Failed(format!("token {:?}: {e}", self.label)));
                }
                Err((generation, e)) => {
                    let retry = match &e {
                        OpError::Ck(CkError::Pkcs11(RvError::UserNotLoggedIn, _)) => {
                            // The token restarted under us: log in again.
                            self.login_gen.store(0, Ordering::SeqCst);
                            true
                        }
                        OpError::Ck(e) if is_gone(e) => {
                            self.module.reinit(generation);
                            true
                        }
                        // Token not found: it may come back after a re-initialisation.
                        OpError::Other(m) if m.starts_with("no token labelled") => {
                            self.module.reinit(generation);
                            true
                        }
                        _ => false,
                    };
                    last = match e {
                        OpError::Ck(CkError::Pkcs11(rv, _))
                            if pin_refused(&CkError::Pkcs11(
                                rv,
                                cryptoki::context::Function::Login,
                            )) =>
                        {
                            format!(
                                "token {:?} refused the PIN in keys.pkcs11.pin_file ({rv:?})",
                                self.label
                            )
                        }
                        OpError::Ck(e) => format!("token {:?}: {e}", self.label),
                        OpError::Other(m) => m,
                    };
                    if !retry || round == 1 {
                        break;
                    }
                }
            }
        }
        Err(KeyError::Unavailable(last))
    }

    /// The private key handle for `id` in this generation.
    fn key(&self, session: &Session, generation: u64, id: &[u8]) -> Result<ObjectHandle, OpError> {
        if let Some((g, h)) = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            && *g == generation
        {
            return Ok(*h);
        }
        let found = session.find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(id.to_vec()),
        ])?;
        let h = *found.first().ok_or_else(|| {
            OpError::Other(format!(
                "no private key with CKA_ID {} on token {:?}",
                super::hex(id),
                self.label
            ))
        })?;
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_vec(), (generation, h));
        Ok(h)
    }

    /// Every object of `class` on the token, with CKA_ID, CKA_LABEL (and the key type or the
    /// certificate value).
    pub fn objects(&self, class: ObjectClass) -> Result<Vec<TokenObject>, KeyError> {
        self.run(|s, _| {
            let mut out = Vec::new();
            for h in s.find_objects(&[Attribute::Class(class)])? {
                let mut wanted = vec![AttributeType::Id, AttributeType::Label];
                if class == ObjectClass::CERTIFICATE {
                    wanted.push(AttributeType::Value);
                } else {
                    wanted.push(AttributeType::KeyType);
                }
                let mut o = TokenObject {
                    id: Vec::new(),
                    label: String::new(),
                    key_type: None,
                    value: Vec::new(),
                };
                for a in s.get_attributes(h, &wanted)? {
                    match a {
                        Attribute::Id(v) => o.id = v,
                        Attribute::Label(v) => o.label = String::from_utf8_lossy(&v).into_owned(),
                        Attribute::Value(v) => o.value = v,
                        Attribute::KeyType(t) => o.key_type = Some(t),
                        _ => {}
                    }
                }
                out.push(o);
            }
            Ok(out)
        })
    }

    /// Create token objects (`cachet keys import`). Returns nothing but errors.
    pub fn create(&self, objects: &[Vec<Attribute>]) -> Result<(), KeyError> {
        self.run(|s, _| {
            for template in objects {
                s.create_object(template)?;
            }
            Ok(())
        })
    }

    /// Sessions open now (checked out or idle); never more than `keys.pkcs11.sessions`.
    pub fn sessions_open(&self) -> usize {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).open
    }

    /// Whether a private key with this CKA_ID exists.
    pub fn has_key(&self, id: &[u8]) -> Result<bool, KeyError> {
        self.run(|s, _| {
            Ok(!s
                .find_objects(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Id(id.to_vec()),
                ])?
                .is_empty())
        })
    }
}

/// A private key on a token, found by CKA_ID at every use (handles do not survive a restart).
pub struct TokenKey {
    pub token: Arc<Token>,
    pub id: Vec<u8>,
    /// RSA (else EC P-256): decides which operations fit the key.
    pub rsa: bool,
    /// The certificate's subjectPublicKey contents: every signature is verified against it
    /// before it is used, so a token re-initialised with another key under the same CKA_ID
    /// defers mail instead of sending signatures nobody can verify.
    pub public: Vec<u8>,
}

/// DigestInfo prefixes for RSASSA-PKCS1-v1_5 (RFC 8017 §9.2, note 1).
const SHA256_DIGEST_INFO: &[u8] = &[
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
const SHA512_DIGEST_INFO: &[u8] = &[
    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05,
    0x00, 0x04, 0x40,
];

/// `r || s` (PKCS#11 CKM_ECDSA output) -> DER `ECDSA-Sig-Value` (RFC 5753 §7.2, RFC 3279 §2.2.3).
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, String> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) || raw.len() > 132 {
        return Err(format!("ECDSA signature of {} bytes", raw.len()));
    }
    let int = |b: &[u8]| {
        let mut v: Vec<u8> = b.iter().copied().skip_while(|&x| x == 0).collect();
        if v.first().is_none_or(|&x| x & 0x80 != 0) {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, v.len() as u8];
        out.extend(v);
        out
    };
    let (r, s) = raw.split_at(raw.len() / 2);
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30];
    if body.len() >= 0x80 {
        out.push(0x81);
    }
    out.push(body.len() as u8);
    out.extend(body);
    Ok(out)
}

impl PrivateKey for TokenKey {
    fn sign(&self, scheme: SignatureScheme, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let (alg, mech_hash, mgf, prefix) = match scheme {
            SignatureScheme::RsaPkcs1Sha256 | SignatureScheme::RsaPssSha256 => (
                &digest::SHA256,
                MechanismType::SHA256,
                PkcsMgfType::MGF1_SHA256,
                SHA256_DIGEST_INFO,
            ),
            SignatureScheme::RsaPkcs1Sha512 | SignatureScheme::RsaPssSha512 => (
                &digest::SHA512,
                MechanismType::SHA512,
                PkcsMgfType::MGF1_SHA512,
                SHA512_DIGEST_INFO,
            ),
            SignatureScheme::EcdsaP256Sha256 => (
                &digest::SHA256,
                MechanismType::SHA256,
                PkcsMgfType::MGF1_SHA256,
                &[][..],
            ),
        };
        let ec = scheme == SignatureScheme::EcdsaP256Sha256;
        if ec == self.rsa {
            return Err(KeyError::Failed(format!(
                "{scheme:?} does not fit the key's type"
            )));
        }
        let hash = digest::digest(alg, message);
        let raw = self.token.run(|s, generation| {
            let key = self.token.key(s, generation, &self.id)?;
            let sig = match scheme {
                SignatureScheme::RsaPkcs1Sha256 | SignatureScheme::RsaPkcs1Sha512 => {
                    s.sign(&Mechanism::RsaPkcs, key, &[prefix, hash.as_ref()].concat())?
                }
                SignatureScheme::RsaPssSha256 | SignatureScheme::RsaPssSha512 => {
                    // RFC 4055 §3.1: salt length = hash length, as the AlgorithmIdentifier says.
                    let params = PkcsPssParams {
                        hash_alg: mech_hash,
                        mgf,
                        s_len: (hash.as_ref().len() as u64).into(),
                    };
                    s.sign(&Mechanism::RsaPkcsPss(params), key, hash.as_ref())?
                }
                SignatureScheme::EcdsaP256Sha256 => {
                    s.sign(&Mechanism::Ecdsa, key, hash.as_ref())?
                }
            };
            Ok(sig)
        })?;
        let sig = if ec {
            ecdsa_raw_to_der(&raw).map_err(KeyError::Failed)?
        } else {
            raw
        };
        let verify: &dyn aws_lc_rs::signature::VerificationAlgorithm = match scheme {
            SignatureScheme::RsaPkcs1Sha256 => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            SignatureScheme::RsaPkcs1Sha512 => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA512,
            SignatureScheme::RsaPssSha256 => &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
            SignatureScheme::RsaPssSha512 => &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA512,
            SignatureScheme::EcdsaP256Sha256 => &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
        };
        aws_lc_rs::signature::UnparsedPublicKey::new(verify, &self.public)
            .verify(message, &sig)
            .map_err(|_| {
                KeyError::Unavailable(format!(
                    "the key with CKA_ID {} on token {:?} no longer matches its certificate (token re-initialised?); reload after fixing the token",
                    super::hex(&self.id),
                    self.token.label
                ))
            })?;
        Ok(sig)
    }

    fn decrypt(&self, op: Decrypt<'_>) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        match (&op, self.rsa) {
            (Decrypt::EcdhP256 { .. }, true) | (Decrypt::RsaPkcs1(_), false) => {
                return Err(KeyError::Failed(
                    "operation does not fit the key's type".into(),
                ));
            }
            (Decrypt::RsaOaep { .. }, false) => {
                return Err(KeyError::Failed(
                    "operation does not fit the key's type".into(),
                ));
            }
            _ => {}
        }
        self.token.run(|s, generation| {
            let key = self.token.key(s, generation, &self.id)?;
            match op {
                Decrypt::RsaPkcs1(ct) => {
                    Ok(Zeroizing::new(s.decrypt(&Mechanism::RsaPkcs, key, ct)?))
                }
                Decrypt::RsaOaep { ciphertext, hash } => {
                    let (h, mgf) = match hash {
                        OaepHash::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
                        OaepHash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
                        OaepHash::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
                        OaepHash::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
                    };
                    let params = PkcsOaepParams::new(h, mgf, PkcsOaepSource::empty());
                    Ok(Zeroizing::new(s.decrypt(
                        &Mechanism::RsaPkcsOaep(params),
                        key,
                        ciphertext,
                    )?))
                }
                Decrypt::EcdhP256 { peer_point } => {
                    // Z (the x coordinate, RFC 5753 §3.1.1) as a session object the token lets
                    // us read; the KDF runs in-process.
                    let params = Ecdh1DeriveParams::new(EcKdf::null(), peer_point);
                    let secret = s.derive_key(
                        &Mechanism::Ecdh1Derive(params),
                        key,
                        &[
                            Attribute::Class(ObjectClass::SECRET_KEY),
                            Attribute::KeyType(KeyType::GENERIC_SECRET),
                            Attribute::ValueLen(32u64.into()),
                            Attribute::Token(false),
                            Attribute::Sensitive(false),
                            Attribute::Extractable(true),
                        ],
                    )?;
                    let value = s.get_attributes(secret, &[AttributeType::Value]);
                    let _ = s.destroy_object(secret);
                    match value?.into_iter().next() {
                        Some(Attribute::Value(v)) => Ok(Zeroizing::new(v)),
                        _ => Err(OpError::Other("token returned no ECDH secret".into())),
                    }
                }
            }
        })
    }
}

/// CKA_EC_PARAMS for P-256: the DER OID prime256v1 (RFC 5480 §2.1.1.1).
pub const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Templates for `cachet keys import`: the private key (sensitive, never extractable) and its
/// certificates, all with `id`; the label is the address. `sign` is false for a decryption key
/// (an encryption certificate's key): the token then refuses to sign with it (CKA_SIGN false).
pub fn import_templates(
    key: &ImportKey,
    id: &[u8],
    label: &str,
    certs: &[(Vec<u8>, Vec<u8>)],
    sign: bool,
) -> Vec<Vec<Attribute>> {
    let mut private = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(sign),
        Attribute::Id(id.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    match key {
        ImportKey::Rsa {
            n,
            e,
            d,
            p,
            q,
            dp,
            dq,
            qinv,
        } => private.extend([
            Attribute::KeyType(KeyType::RSA),
            Attribute::Decrypt(true),
            Attribute::Modulus(n.to_vec()),
            Attribute::PublicExponent(e.to_vec()),
            Attribute::PrivateExponent(d.to_vec()),
            Attribute::Prime1(p.to_vec()),
            Attribute::Prime2(q.to_vec()),
            Attribute::Exponent1(dp.to_vec()),
            Attribute::Exponent2(dq.to_vec()),
            Attribute::Coefficient(qinv.to_vec()),
        ]),
        ImportKey::EcP256 { scalar } => private.extend([
            Attribute::KeyType(KeyType::EC),
            Attribute::Derive(true),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Value(scalar.to_vec()),
        ]),
    }
    let mut out = vec![private];
    for (i, (der, subject)) in certs.iter().enumerate() {
        out.push(vec![
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::CertificateType(CertificateType::X_509),
            Attribute::Token(true),
            Attribute::Private(false),
            // The signing certificate shares the key's CKA_ID; chain certificates get none.
            Attribute::Id(if i == 0 { id.to_vec() } else { Vec::new() }),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Subject(subject.clone()),
            Attribute::Value(der.clone()),
        ]);
    }
    out
}

/// Private key material for import, wiped on drop.
pub enum ImportKey {
    Rsa {
        n: Zeroizing<Vec<u8>>,
        e: Zeroizing<Vec<u8>>,
        d: Zeroizing<Vec<u8>>,
        p: Zeroizing<Vec<u8>>,
        q: Zeroizing<Vec<u8>>,
        dp: Zeroizing<Vec<u8>>,
        dq: Zeroizing<Vec<u8>>,
        qinv: Zeroizing<Vec<u8>>,
    },
    EcP256 {
        scalar: Zeroizing<Vec<u8>>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_raw_signatures_become_der_integers() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r needs a leading zero byte
        raw[32] = 0x00;
        raw[33] = 0x01; // s has a leading zero to strip
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(der[0], 0x30);
        assert_eq!(&der[2..5], &[0x02, 33, 0x00]);
        let s_at = 2 + 2 + 33;
        assert_eq!(der[s_at], 0x02);
        assert_eq!(der[s_at + 1], 31);
        assert_eq!(der[1] as usize, der.len() - 2);
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_err());
    }

    #[test]
    fn a_wrong_pin_is_never_retried_and_gone_errors_are_recognised() {
        use cryptoki::context::Function;
        assert!(pin_refused(&CkError::Pkcs11(
            RvError::PinIncorrect,
            Function::Login
        )));
        assert!(is_gone(&CkError::Pkcs11(
            RvError::SessionHandleInvalid,
            Function::Sign
        )));
        assert!(!is_gone(&CkError::Pkcs11(
            RvError::PinIncorrect,
            Function::Login
        )));
    }
}
