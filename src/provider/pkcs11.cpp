// The PKCS#11 master-key provider: finds the token by label, logs in with the PIN file,
// wraps and unwraps DEKs with CKM_AES_KEY_WRAP and computes audit MACs with
// CKM_SHA256_HMAC, all inside the token.
#include "pgkm/core/error.hpp"
#include "pgkm/provider/master_label.hpp"
#include "pgkm/provider/pkcs11.hpp"
#include "pgkm/provider/provider.hpp"

#include <array>
#include <cstring>
#include <map>
#include <mutex>

namespace pgkm::provider
{

namespace
{

using core::Error;
using core::ErrorKind;
using pkcs11::Check;
using pkcs11::Detail;
using pkcs11::Module;
using pkcs11::SessionLost;

constexpr std::size_t kDekSize = 32;
constexpr std::size_t kWrappedSize = kDekSize + 8; // RFC 3394 adds one 64-bit block
constexpr CK_ULONG kMasterKeySize = 32;
constexpr CK_ULONG kMacKeySize = 32;
constexpr std::size_t kTokenLabelSize = 32;
constexpr CK_ULONG kFindBatch = 64;

// Whether C_UnwrapKey's answer means the blob failed the mechanism's integrity check
// (SoftHSM reports it as CKR_GENERAL_ERROR; other modules use the specific codes).
bool IsIntegrityFailure(CK_RV rv) noexcept
{
	switch (rv)
	{
	case CKR_WRAPPED_KEY_INVALID:
	case CKR_WRAPPED_KEY_LEN_RANGE:
	case CKR_ENCRYPTED_DATA_INVALID:
	case CKR_ENCRYPTED_DATA_LEN_RANGE:
	case CKR_GENERAL_ERROR:
	case CKR_FUNCTION_FAILED:
		return true;
	default:
		return false;
	}
}

// Whether C_SignInit's or C_VerifyInit's answer means the key exists but may not compute an
// HMAC-SHA-256 (a master key, a key without CKA_SIGN or CKA_VERIFY, a key too short).
bool IsUnusableMacKey(CK_RV rv) noexcept
{
	return rv == CKR_KEY_TYPE_INCONSISTENT || rv == CKR_KEY_FUNCTION_NOT_PERMITTED ||
		   rv == CKR_KEY_SIZE_RANGE;
}

// Returns a pointer that PKCS#11 accepts for input bytes: a module may refuse a null pointer
// even with a zero length (SoftHSM answers CKR_ARGUMENTS_BAD and keeps the operation active).
CK_BYTE_PTR InputBytes(ByteView bytes) noexcept
{
	static CK_BYTE empty = 0;
	return bytes.empty() ? &empty : const_cast<CK_BYTE_PTR>(bytes.data());
}

// Serialises the find-then-generate of EnsureMacKey among every provider of the process, so
// that two racing calls cannot both create a key with the same label.
std::mutex &MacKeyMutex()
{
	static std::mutex mutex;
	return mutex;
}

// Builds one template entry; PKCS#11 takes non-const pointers even for input values.
CK_ATTRIBUTE Attribute(CK_ATTRIBUTE_TYPE type, const void *value, CK_ULONG length)
{
	return CK_ATTRIBUTE{type, const_cast<void *>(value), length};
}

// Destroys a session object (a DEK copy inside the token) whatever way the scope ends.
class ObjectGuard
{
  public:
	ObjectGuard(CK_FUNCTION_LIST *functions, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE object)
		: functions_(functions), session_(session), object_(object)
	{
	}
	~ObjectGuard() { functions_->C_DestroyObject(session_, object_); }
	ObjectGuard(const ObjectGuard &) = delete;
	ObjectGuard &operator=(const ObjectGuard &) = delete;

  private:
	CK_FUNCTION_LIST *functions_;
	CK_SESSION_HANDLE session_;
	CK_OBJECT_HANDLE object_;
};

// Ends a C_FindObjects search whatever way the scope ends, so the session stays usable.
class FindGuard
{
  public:
	FindGuard(CK_FUNCTION_LIST *functions, CK_SESSION_HANDLE session)
		: functions_(functions), session_(session)
	{
	}
	~FindGuard() { functions_->C_FindObjectsFinal(session_); }
	FindGuard(const FindGuard &) = delete;
	FindGuard &operator=(const FindGuard &) = delete;

  private:
	CK_FUNCTION_LIST *functions_;
	CK_SESSION_HANDLE session_;
};

// One connection to the token: a session, its login and the key handles. Not
// thread-safe: an object serves one thread (a backend) at a time.
class Pkcs11Provider final : public Provider
{
  public:
	explicit Pkcs11Provider(Pkcs11Config config) : config_(std::move(config)) {}
	~Pkcs11Provider() override;
	Pkcs11Provider(const Pkcs11Provider &) = delete;
	Pkcs11Provider &operator=(const Pkcs11Provider &) = delete;

	std::string Mechanism() const override;
	std::optional<std::string> FindNewestMasterKey(const std::string &base_label) override;
	void Generate(const std::string &label) override;
	std::vector<std::uint8_t> Wrap(const std::string &master_label, ByteView dek) override;
	core::SecureBuffer Unwrap(const std::string &master_label, ByteView wrapped) override;
	MasterKeyInfo Describe(const std::string &master_label) override;
	void Destroy(const std::string &master_label) override;
	bool EnsureMacKey(const std::string &label) override;
	std::array<std::uint8_t, kMacSize> Mac(const std::string &label, ByteView data) override;
	bool VerifyMac(const std::string &label, ByteView data, ByteView mac) override;

  private:
	template <typename Operation> auto WithSession(Operation &&operation) -> decltype(operation());
	void EnsureConnected();
	void Connect();
	void Disconnect(bool logout) noexcept;
	CK_SLOT_ID FindSlot();
	void Login();
	std::vector<CK_OBJECT_HANDLE> FindObjects(CK_ATTRIBUTE *search, CK_ULONG count);
	std::optional<CK_OBJECT_HANDLE> FindKey(const std::string &label);
	CK_OBJECT_HANDLE RequireKey(const std::string &label, const char *what = "master key");
	void RequireMacUsage(CK_OBJECT_HANDLE key, const std::string &label);
	// The one pair of usages a generated key allows.
	enum class Usage
	{
		WrapUnwrap, // master keys
		SignVerify, // the audit MAC key
	};
	void StartMac(CK_RV (*init)(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE),
				  const char *function, CK_OBJECT_HANDLE key, const std::string &label,
				  const std::string &message);
	void GenerateSecretKey(const std::string &label, const char *what, CK_KEY_TYPE key_type,
						   CK_MECHANISM_TYPE mechanism_type, CK_ULONG value_len, Usage usage);
	std::optional<std::string> ReadLabel(CK_OBJECT_HANDLE object);
	std::string Token() const;

	const Pkcs11Config config_;
	Module *module_ = nullptr;
	CK_FUNCTION_LIST *functions_ = nullptr;
	std::uint64_t generation_ = 0;
	bool connected_ = false;
	CK_SESSION_HANDLE session_ = CK_INVALID_HANDLE;
	std::map<std::string, CK_OBJECT_HANDLE> keys_; // master and MAC key handles by label
	// The PIN file version the token refused, and how: never tried again (an HSM may lock
	// its user after a few wrong PINs), until the file changes.
	struct RefusedPin
	{
		PinFileVersion version;
		CK_RV rv;
	};
	std::optional<RefusedPin> refused_pin_;
};

// Closes the session, and when this is the library's last user in the process, logs out
// and finalises; a fork child that never initialised the library calls nothing.
Pkcs11Provider::~Pkcs11Provider()
{
	if (module_ == nullptr)
		return;
	Disconnect(module_->users() == 1);
	Module::Release(*module_);
}

// Names the RFC 3394 mechanism, recorded beside every wrapped DEK.
std::string Pkcs11Provider::Mechanism() const
{
	return "CKM_AES_KEY_WRAP";
}

// Runs one operation on a live session. When the session, login or library state turns
// out to be lost, reconnects and runs the whole operation once more. The reconnection
// initialises the library afresh: a module may list its tokens only at C_Initialize
// (SoftHSM2 reads its token directory then), so a token that was removed and put back is
// found only that way.
// When the second attempt fails too, its error's detail also names what the first one got.
template <typename Operation>
auto Pkcs11Provider::WithSession(Operation &&operation) -> decltype(operation())
{
	std::string first_failure;
	try
	{
		EnsureConnected();
		return operation();
	}
	catch (const SessionLost &lost)
	{
		first_failure = lost.detail();
		const std::uint64_t lost_generation = generation_;
		Disconnect(false);
		module_->MarkLost(lost_generation);
	}
	try
	{
		EnsureConnected();
		return operation();
	}
	catch (const Error &error)
	{
		std::string detail = error.detail();
		detail += (detail.empty() ? "" : "; ") + ("before reconnecting, " + first_failure);
		throw Error(error.kind(), error.message(), detail, error.hint());
	}
}

// Connects on first use, and again in a fork child or after the library was re-initialised.
// A connection that fails at the token (not for a setting or the PIN file) makes the next
// attempt initialise the library afresh, for the same reason as in WithSession.
void Pkcs11Provider::EnsureConnected()
{
	if (connected_ && module_->IsCurrent(generation_))
		return;
	Disconnect(false);
	if (module_ == nullptr)
	{
		if (config_.module_path.empty())
			throw Error(ErrorKind::Configuration, "no PKCS#11 module is configured");
		if (config_.token_label.empty())
			throw Error(ErrorKind::Configuration, "no PKCS#11 token label is configured");
		module_ = &Module::Acquire(config_.module_path);
		functions_ = module_->functions();
	}
	try
	{
		Connect();
	}
	catch (const Error &error)
	{
		if (error.kind() == ErrorKind::TokenUnavailable)
			module_->MarkLost(generation_);
		throw;
	}
}

// Initialises the library in this process, opens a read-write session and logs in.
void Pkcs11Provider::Connect()
{
	generation_ = module_->EnsureInitialised();
	const CK_SLOT_ID slot = FindSlot();
	CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
	Check(functions_->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr,
									&session),
		  "C_OpenSession", ErrorKind::TokenUnavailable,
		  "could not open a session on PKCS#11 token " + Token());
	session_ = session;
	connected_ = true;
	try
	{
		Login();
	}
	catch (...)
	{
		Disconnect(false);
		throw;
	}
}

// Forgets the session and every cached handle; closes the session only while its handle
// still belongs to this process and this initialisation of the library.
void Pkcs11Provider::Disconnect(bool logout) noexcept
{
	if (connected_ && module_->IsCurrent(generation_))
	{
		if (logout)
			functions_->C_Logout(session_);
		functions_->C_CloseSession(session_);
	}
	connected_ = false;
	session_ = CK_INVALID_HANDLE;
	keys_.clear();
}

// Finds the one slot whose token carries the configured label (slot ids are not stable).
CK_SLOT_ID Pkcs11Provider::FindSlot()
{
	std::vector<CK_SLOT_ID> slots;
	for (;;)
	{
		CK_ULONG count = 0;
		Check(functions_->C_GetSlotList(CK_TRUE, nullptr, &count), "C_GetSlotList",
			  ErrorKind::TokenUnavailable, "could not list PKCS#11 slots");
		slots.resize(count);
		if (count == 0)
			break;
		const CK_RV rv = functions_->C_GetSlotList(CK_TRUE, slots.data(), &count);
		if (rv == CKR_BUFFER_TOO_SMALL)
			continue; // a token appeared between the two calls
		Check(rv, "C_GetSlotList", ErrorKind::TokenUnavailable, "could not list PKCS#11 slots");
		slots.resize(count);
		break;
	}

	std::array<unsigned char, kTokenLabelSize> wanted;
	wanted.fill(' ');
	const bool label_fits = config_.token_label.size() <= kTokenLabelSize;
	if (label_fits)
		std::memcpy(wanted.data(), config_.token_label.data(), config_.token_label.size());

	std::optional<CK_SLOT_ID> match;
	std::string seen; // what each slot holds, for the error
	for (const CK_SLOT_ID slot : slots)
	{
		CK_TOKEN_INFO info;
		seen += (seen.empty() ? "" : ", ") + std::to_string(slot) + " ";
		const CK_RV rv = functions_->C_GetTokenInfo(slot, &info);
		if (rv != CKR_OK)
		{
			seen += "(" + Detail("C_GetTokenInfo", rv) + ")"; // removed meanwhile, say
			continue;
		}
		if (label_fits && std::memcmp(info.label, wanted.data(), kTokenLabelSize) == 0)
		{
			if (match)
				throw Error(ErrorKind::TokenUnavailable,
							"more than one PKCS#11 token is labelled " + Token(), {},
							"Give each token a distinct label.");
			match = slot;
		}
		std::string label(reinterpret_cast<const char *>(info.label), kTokenLabelSize);
		label.erase(label.find_last_not_of(' ') + 1);
		seen += "(\"" + label + "\"" +
				((info.flags & CKF_TOKEN_INITIALIZED) ? "" : ", not initialized") + ")";
	}
	if (!match)
		throw Error(ErrorKind::TokenUnavailable, "PKCS#11 token " + Token() + " not found",
					"CKR_TOKEN_NOT_PRESENT: no slot holds a token labelled " + Token() +
						"; C_GetSlotList lists " + std::to_string(slots.size()) +
						" slot(s) with a token" + (seen.empty() ? std::string() : ": " + seen),
					"Check that the token is present (the HSM reachable, a SoftHSM2 token "
					"directory in place) and that pgkm.pkcs11_token_label names it; pgkm looks "
					"for it again at the next call.");
	return *match;
}

// Reads the PIN file now (never earlier, never kept) and logs in as the user. A PIN file
// that the token refused is not tried again until it changes.
void Pkcs11Provider::Login()
{
	const std::string message = "could not log in to PKCS#11 token " + Token();
	const char *hint = "Check the PIN file against the token's user PIN; pgkm reads the file "
					   "again at the next login.";
	CK_RV rv;
	PinFileVersion version;
	{
		core::SecureBuffer pin = ReadPinFile(config_.pin_file, &version);
		if (refused_pin_ && refused_pin_->version == version)
			throw Error(ErrorKind::TokenUnavailable, message,
						Detail("C_Login", refused_pin_->rv) +
							" (earlier, for this version of the PIN file: not tried again until "
							"it changes, lest the token lock its user)",
						hint);
		rv = functions_->C_Login(session_, CKU_USER, pin.data(), pin.size());
	}
	if (rv == CKR_USER_ALREADY_LOGGED_IN)
		return;
	if (rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LOCKED || rv == CKR_PIN_EXPIRED ||
		rv == CKR_PIN_LEN_RANGE || rv == CKR_PIN_INVALID)
	{
		refused_pin_ = RefusedPin{version, rv};
		throw Error(ErrorKind::TokenUnavailable, message, Detail("C_Login", rv), hint);
	}
	Check(rv, "C_Login", ErrorKind::TokenUnavailable, message);
	refused_pin_.reset();
}

// Collects the handles of every object matching the template.
std::vector<CK_OBJECT_HANDLE> Pkcs11Provider::FindObjects(CK_ATTRIBUTE *search, CK_ULONG count)
{
	const std::string message = "could not search PKCS#11 token " + Token();
	Check(functions_->C_FindObjectsInit(session_, search, count), "C_FindObjectsInit",
		  ErrorKind::TokenUnavailable, message);
	FindGuard guard(functions_, session_);
	std::vector<CK_OBJECT_HANDLE> objects;
	for (;;)
	{
		std::array<CK_OBJECT_HANDLE, kFindBatch> batch;
		CK_ULONG found = 0;
		Check(functions_->C_FindObjects(session_, batch.data(), batch.size(), &found),
			  "C_FindObjects", ErrorKind::TokenUnavailable, message);
		if (found == 0)
			break;
		objects.insert(objects.end(), batch.begin(), batch.begin() + found);
	}
	return objects;
}

// Looks a secret key up by label, through the handle cache; refuses an ambiguous label.
std::optional<CK_OBJECT_HANDLE> Pkcs11Provider::FindKey(const std::string &label)
{
	const auto cached = keys_.find(label);
	if (cached != keys_.end())
		return cached->second;

	CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
	std::array search = {
		Attribute(CKA_CLASS, &key_class, sizeof key_class),
		Attribute(CKA_LABEL, label.data(), label.size()),
	};
	const std::vector<CK_OBJECT_HANDLE> objects = FindObjects(search.data(), search.size());
	if (objects.empty())
		return std::nullopt;
	if (objects.size() > 1)
		throw Error(ErrorKind::TokenUnavailable,
					"PKCS#11 token " + Token() + " holds " + std::to_string(objects.size()) +
						" secret keys labelled \"" + label + "\"",
					{}, "A master key label must name exactly one key.");
	keys_.emplace(label, objects.front());
	return objects.front();
}

// Looks a master or MAC key up by label or throws Error(UnknownKey) naming what was wanted.
CK_OBJECT_HANDLE Pkcs11Provider::RequireKey(const std::string &label, const char *what)
{
	const std::optional<CK_OBJECT_HANDLE> key = FindKey(label);
	if (!key)
		throw Error(ErrorKind::UnknownKey,
					std::string(what) + " \"" + label + "\" not found in PKCS#11 token " + Token(),
					"C_FindObjects: no secret key labelled \"" + label + "\"",
					"If the key was deleted from the token, restore it from the HSM's backup; "
					"pgkm finds it again at the next call.");
	return *key;
}

// Refuses a key found under the MAC key's label that is not an HMAC key allowed to sign and
// verify (a master key under the same label, say): Error(KeyNotUsable).
void Pkcs11Provider::RequireMacUsage(CK_OBJECT_HANDLE key, const std::string &label)
{
	CK_KEY_TYPE key_type = CKK_AES;
	CK_BBOOL sign = CK_FALSE, verify = CK_FALSE;
	std::array attributes = {
		Attribute(CKA_KEY_TYPE, &key_type, sizeof key_type),
		Attribute(CKA_SIGN, &sign, sizeof sign),
		Attribute(CKA_VERIFY, &verify, sizeof verify),
	};
	Check(functions_->C_GetAttributeValue(session_, key, attributes.data(), attributes.size()),
		  "C_GetAttributeValue", ErrorKind::TokenUnavailable,
		  "could not read the attributes of MAC key \"" + label + "\"");
	if ((key_type != CKK_GENERIC_SECRET && key_type != CKK_SHA256_HMAC) || sign != CK_TRUE ||
		verify != CK_TRUE)
		throw Error(ErrorKind::KeyNotUsable,
					"secret key \"" + label + "\" in PKCS#11 token " + Token() +
						" is not an HMAC key that may sign and verify",
					{}, "Give the audit MAC key a label of its own.");
}

// Reads an object's CKA_LABEL; nullopt when the object has none.
std::optional<std::string> Pkcs11Provider::ReadLabel(CK_OBJECT_HANDLE object)
{
	const std::string message = "could not read a key label in PKCS#11 token " + Token();
	CK_ATTRIBUTE attribute = Attribute(CKA_LABEL, nullptr, 0);
	CK_RV rv = functions_->C_GetAttributeValue(session_, object, &attribute, 1);
	if (rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE)
		return std::nullopt;
	Check(rv, "C_GetAttributeValue", ErrorKind::TokenUnavailable, message);
	if (attribute.ulValueLen == CK_UNAVAILABLE_INFORMATION)
		return std::nullopt;
	std::string label(attribute.ulValueLen, '\0');
	attribute.pValue = label.data();
	rv = functions_->C_GetAttributeValue(session_, object, &attribute, 1);
	Check(rv, "C_GetAttributeValue", ErrorKind::TokenUnavailable, message);
	label.resize(attribute.ulValueLen);
	return label;
}

// Quotes the token label for messages.
std::string Pkcs11Provider::Token() const
{
	return "\"" + config_.token_label + "\"";
}

// Reads the label of every secret key and keeps the highest "<base>.vN".
std::optional<std::string> Pkcs11Provider::FindNewestMasterKey(const std::string &base_label)
{
	return WithSession(
		[&]() -> std::optional<std::string>
		{
			CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
			std::array search = {Attribute(CKA_CLASS, &key_class, sizeof key_class)};
			std::optional<std::string> newest;
			std::uint64_t newest_version = 0;
			for (const CK_OBJECT_HANDLE object : FindObjects(search.data(), search.size()))
			{
				std::optional<std::string> label = ReadLabel(object);
				if (!label)
					continue;
				const auto version = MasterKeyVersion(base_label, *label);
				if (version && *version > newest_version)
				{
					newest_version = *version;
					newest = std::move(label);
				}
			}
			return newest;
		});
}

// Generates a secret key inside the token under label: persistent, private, sensitive, never
// extractable, with every usage attribute set explicitly (a token's defaults differ: SoftHSM
// allows signing with a key that does not say otherwise), only usage's pair allowed. CKA_ID
// repeats the label for tools that select by id.
void Pkcs11Provider::GenerateSecretKey(const std::string &label, const char *what,
									   CK_KEY_TYPE key_type, CK_MECHANISM_TYPE mechanism_type,
									   CK_ULONG value_len, Usage usage)
{
	CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
	CK_BBOOL yes = CK_TRUE;
	CK_BBOOL no = CK_FALSE;
	CK_BBOOL *wrap = usage == Usage::WrapUnwrap ? &yes : &no;
	CK_BBOOL *sign = usage == Usage::SignVerify ? &yes : &no;
	std::array key_template = {
		Attribute(CKA_CLASS, &key_class, sizeof key_class),
		Attribute(CKA_KEY_TYPE, &key_type, sizeof key_type),
		Attribute(CKA_VALUE_LEN, &value_len, sizeof value_len),
		Attribute(CKA_TOKEN, &yes, sizeof yes),
		Attribute(CKA_PRIVATE, &yes, sizeof yes),
		Attribute(CKA_SENSITIVE, &yes, sizeof yes),
		Attribute(CKA_EXTRACTABLE, &no, sizeof no),
		Attribute(CKA_WRAP, wrap, sizeof yes),
		Attribute(CKA_UNWRAP, wrap, sizeof yes),
		Attribute(CKA_SIGN, sign, sizeof yes),
		Attribute(CKA_VERIFY, sign, sizeof yes),
		Attribute(CKA_ENCRYPT, &no, sizeof no),
		Attribute(CKA_DECRYPT, &no, sizeof no),
		Attribute(CKA_DERIVE, &no, sizeof no),
		Attribute(CKA_LABEL, label.data(), label.size()),
		Attribute(CKA_ID, label.data(), label.size()),
	};
	CK_MECHANISM mechanism{mechanism_type, nullptr, 0};
	CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
	Check(functions_->C_GenerateKey(session_, &mechanism, key_template.data(), key_template.size(),
									&key),
		  "C_GenerateKey", ErrorKind::TokenUnavailable,
		  std::string("could not generate ") + what + " \"" + label + "\" in PKCS#11 token " +
			  Token());
	keys_.emplace(label, key);
}

// Generates the key inside the token: persistent, private, sensitive, never extractable,
// usable only to wrap and unwrap. CKA_ID repeats the label for tools that select by id.
void Pkcs11Provider::Generate(const std::string &label)
{
	if (label.empty())
		throw Error(ErrorKind::InvalidArgument, "master key label must not be empty");
	WithSession(
		[&]
		{
			if (FindKey(label))
				throw Error(ErrorKind::InvalidArgument, "master key \"" + label +
															"\" already exists in PKCS#11 token " +
															Token());
			GenerateSecretKey(label, "master key", CKK_AES, CKM_AES_KEY_GEN, kMasterKeySize,
							  Usage::WrapUnwrap);
		});
}

// Loads the DEK as a short-lived session object and wraps it under the master key.
std::vector<std::uint8_t> Pkcs11Provider::Wrap(const std::string &master_label, ByteView dek)
{
	if (dek.size() != kDekSize)
		throw Error(ErrorKind::InvalidArgument, "a data encryption key must be 32 bytes");
	return WithSession(
		[&]
		{
			const CK_OBJECT_HANDLE master = RequireKey(master_label);
			CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
			CK_KEY_TYPE key_type = CKK_AES;
			CK_BBOOL yes = CK_TRUE;
			CK_BBOOL no = CK_FALSE;
			std::array dek_template = {
				Attribute(CKA_CLASS, &key_class, sizeof key_class),
				Attribute(CKA_KEY_TYPE, &key_type, sizeof key_type),
				Attribute(CKA_VALUE, dek.data(), dek.size()),
				Attribute(CKA_TOKEN, &no, sizeof no),
				Attribute(CKA_PRIVATE, &yes, sizeof yes),
				Attribute(CKA_EXTRACTABLE, &yes, sizeof yes),
				Attribute(CKA_SENSITIVE, &no, sizeof no),
			};
			const std::string message =
				"could not wrap a data encryption key under master key \"" + master_label + "\"";
			CK_OBJECT_HANDLE dek_object = CK_INVALID_HANDLE;
			Check(functions_->C_CreateObject(session_, dek_template.data(), dek_template.size(),
											 &dek_object),
				  "C_CreateObject", ErrorKind::TokenUnavailable, message);
			ObjectGuard guard(functions_, session_, dek_object);

			CK_MECHANISM mechanism{CKM_AES_KEY_WRAP, nullptr, 0};
			CK_ULONG length = 0;
			Check(functions_->C_WrapKey(session_, &mechanism, master, dek_object, nullptr, &length),
				  "C_WrapKey", ErrorKind::TokenUnavailable, message);
			std::vector<std::uint8_t> wrapped(length);
			Check(functions_->C_WrapKey(session_, &mechanism, master, dek_object, wrapped.data(),
										&length),
				  "C_WrapKey", ErrorKind::TokenUnavailable, message);
			if (length != kWrappedSize)
				throw Error(ErrorKind::Internal, message,
							"C_WrapKey returned " + std::to_string(length) + " bytes, expected " +
								std::to_string(kWrappedSize));
			wrapped.resize(length);
			return wrapped;
		});
}

// Unwraps into a short-lived session object, copies its value into locked memory, and
// destroys the object. An integrity failure is Error(WrongMasterKey).
core::SecureBuffer Pkcs11Provider::Unwrap(const std::string &master_label, ByteView wrapped)
{
	if (wrapped.size() != kWrappedSize)
		throw Error(ErrorKind::WrongMasterKey, "wrapped key has the wrong length",
					"expected " + std::to_string(kWrappedSize) + " bytes, got " +
						std::to_string(wrapped.size()));
	return WithSession(
		[&]
		{
			const CK_OBJECT_HANDLE master = RequireKey(master_label);
			CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
			CK_KEY_TYPE key_type = CKK_AES;
			CK_BBOOL yes = CK_TRUE;
			CK_BBOOL no = CK_FALSE;
			std::array dek_template = {
				Attribute(CKA_CLASS, &key_class, sizeof key_class),
				Attribute(CKA_KEY_TYPE, &key_type, sizeof key_type),
				Attribute(CKA_TOKEN, &no, sizeof no),
				Attribute(CKA_PRIVATE, &yes, sizeof yes),
				Attribute(CKA_SENSITIVE, &no, sizeof no),
				Attribute(CKA_EXTRACTABLE, &yes, sizeof yes),
			};
			const std::string message =
				"could not unwrap a data encryption key under master key \"" + master_label + "\"";
			CK_MECHANISM mechanism{CKM_AES_KEY_WRAP, nullptr, 0};
			CK_OBJECT_HANDLE dek_object = CK_INVALID_HANDLE;
			const CK_RV rv = functions_->C_UnwrapKey(
				session_, &mechanism, master, const_cast<std::uint8_t *>(wrapped.data()),
				wrapped.size(), dek_template.data(), dek_template.size(), &dek_object);
			if (IsIntegrityFailure(rv))
				throw Error(ErrorKind::WrongMasterKey,
							"wrapped key does not unwrap under master key \"" + master_label + "\"",
							Detail("C_UnwrapKey", rv));
			Check(rv, "C_UnwrapKey", ErrorKind::TokenUnavailable, message);
			ObjectGuard guard(functions_, session_, dek_object);

			// RFC 3394 turns 40 bytes into exactly 32, so one call with a 32-byte buffer suffices.
			core::SecureBuffer dek(kDekSize);
			CK_ATTRIBUTE value = Attribute(CKA_VALUE, dek.data(), dek.size());
			Check(functions_->C_GetAttributeValue(session_, dek_object, &value, 1),
				  "C_GetAttributeValue", ErrorKind::TokenUnavailable, message);
			if (value.ulValueLen != kDekSize)
				throw Error(ErrorKind::Internal, message,
							"the unwrapped key has " + std::to_string(value.ulValueLen) + " bytes");
			return dek;
		});
}

// Reads the attributes that show the key is fit to be a master key; the value is never read.
MasterKeyInfo Pkcs11Provider::Describe(const std::string &master_label)
{
	return WithSession(
		[&]
		{
			const CK_OBJECT_HANDLE key = RequireKey(master_label);
			CK_ULONG value_len = 0;
			CK_BBOOL token = CK_FALSE, sensitive = CK_FALSE, extractable = CK_FALSE;
			CK_BBOOL wrap = CK_FALSE, unwrap = CK_FALSE, sign = CK_FALSE, verify = CK_FALSE;
			std::array attributes = {
				Attribute(CKA_VALUE_LEN, &value_len, sizeof value_len),
				Attribute(CKA_TOKEN, &token, sizeof token),
				Attribute(CKA_SENSITIVE, &sensitive, sizeof sensitive),
				Attribute(CKA_EXTRACTABLE, &extractable, sizeof extractable),
				Attribute(CKA_WRAP, &wrap, sizeof wrap),
				Attribute(CKA_UNWRAP, &unwrap, sizeof unwrap),
				Attribute(CKA_SIGN, &sign, sizeof sign),
				Attribute(CKA_VERIFY, &verify, sizeof verify),
			};
			const CK_RV rv = functions_->C_GetAttributeValue(session_, key, attributes.data(),
															 attributes.size());
			// Attributes a module does not know come back as CK_UNAVAILABLE_INFORMATION.
			if (rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE)
				Check(rv, "C_GetAttributeValue", ErrorKind::TokenUnavailable,
					  "could not read the attributes of master key \"" + master_label + "\"");
			const auto available = [&](std::size_t index)
			{ return attributes[index].ulValueLen != CK_UNAVAILABLE_INFORMATION; };
			MasterKeyInfo info;
			info.label = master_label;
			info.key_bits = available(0) ? value_len * 8 : 0;
			info.token = available(1) && token == CK_TRUE;
			info.sensitive = available(2) && sensitive == CK_TRUE;
			info.extractable = available(3) && extractable == CK_TRUE;
			info.can_wrap = available(4) && wrap == CK_TRUE;
			info.can_unwrap = available(5) && unwrap == CK_TRUE;
			info.can_sign = available(6) && sign == CK_TRUE;
			info.can_verify = available(7) && verify == CK_TRUE;
			return info;
		});
}

// Deletes the master key object from the token and forgets its handle. A stale cached handle
// (the key deleted meanwhile by another process) is a session loss: the retry looks the label
// up afresh and finds nothing (Error(UnknownKey)).
void Pkcs11Provider::Destroy(const std::string &master_label)
{
	WithSession(
		[&]
		{
			const CK_OBJECT_HANDLE key = RequireKey(master_label);
			Check(functions_->C_DestroyObject(session_, key), "C_DestroyObject",
				  ErrorKind::TokenUnavailable,
				  "could not destroy master key \"" + master_label + "\" in PKCS#11 token " +
					  Token());
			keys_.erase(master_label);
		});
}

// Finds the MAC key or generates it inside the token: persistent, private, sensitive, never
// extractable, usable only to sign and verify. CKA_ID repeats the label, as for master keys.
bool Pkcs11Provider::EnsureMacKey(const std::string &label)
{
	if (label.empty())
		throw Error(ErrorKind::InvalidArgument, "MAC key label must not be empty");
	std::lock_guard lock(MacKeyMutex());
	return WithSession(
		[&]
		{
			if (const std::optional<CK_OBJECT_HANDLE> existing = FindKey(label))
			{
				RequireMacUsage(*existing, label);
				return false;
			}
			GenerateSecretKey(label, "MAC key", CKK_GENERIC_SECRET, CKM_GENERIC_SECRET_KEY_GEN,
							  kMacKeySize, Usage::SignVerify);
			return true;
		});
}

// Starts a CKM_SHA256_HMAC sign or verify operation (init: C_SignInit or C_VerifyInit). A key
// that cannot do HMAC-SHA-256 is Error(KeyNotUsable); other failures, Error(TokenUnavailable).
void Pkcs11Provider::StartMac(CK_RV (*init)(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE),
							  const char *function, CK_OBJECT_HANDLE key, const std::string &label,
							  const std::string &message)
{
	CK_MECHANISM mechanism{CKM_SHA256_HMAC, nullptr, 0};
	const CK_RV rv = init(session_, &mechanism, key);
	if (IsUnusableMacKey(rv))
		throw Error(ErrorKind::KeyNotUsable,
					"key \"" + label + "\" cannot be used for HMAC-SHA-256", Detail(function, rv));
	Check(rv, function, ErrorKind::TokenUnavailable, message);
}

// Computes HMAC-SHA-256 inside the token; the key never leaves it.
std::array<std::uint8_t, kMacSize> Pkcs11Provider::Mac(const std::string &label, ByteView data)
{
	return WithSession(
		[&]
		{
			const CK_OBJECT_HANDLE key = RequireKey(label, "MAC key");
			const std::string message =
				"could not compute a MAC with key \"" + label + "\" in PKCS#11 token " + Token();
			StartMac(functions_->C_SignInit, "C_SignInit", key, label, message);
			std::array<std::uint8_t, kMacSize> mac{};
			CK_ULONG length = mac.size();
			Check(functions_->C_Sign(session_, InputBytes(data), data.size(), mac.data(), &length),
				  "C_Sign", ErrorKind::TokenUnavailable, message);
			if (length != kMacSize)
				throw Error(ErrorKind::Internal, message,
							"C_Sign returned " + std::to_string(length) + " bytes, expected " +
								std::to_string(kMacSize));
			return mac;
		});
}

// Lets the token compare the MAC; a wrong or wrongly sized MAC is false, not an error.
bool Pkcs11Provider::VerifyMac(const std::string &label, ByteView data, ByteView mac)
{
	return WithSession(
		[&]
		{
			const CK_OBJECT_HANDLE key = RequireKey(label, "MAC key");
			const std::string message =
				"could not verify a MAC with key \"" + label + "\" in PKCS#11 token " + Token();
			StartMac(functions_->C_VerifyInit, "C_VerifyInit", key, label, message);
			const CK_RV rv = functions_->C_Verify(session_, InputBytes(data), data.size(),
												  InputBytes(mac), mac.size());
			if (rv == CKR_SIGNATURE_INVALID || rv == CKR_SIGNATURE_LEN_RANGE)
				return false;
			Check(rv, "C_Verify", ErrorKind::TokenUnavailable, message);
			return true;
		});
}

} // namespace

// Stores the configuration; nothing is loaded until the first call that needs the token.
std::unique_ptr<Provider> MakePkcs11Provider(const Pkcs11Config &config)
{
	return std::make_unique<Pkcs11Provider>(config);
}

} // namespace pgkm::provider
