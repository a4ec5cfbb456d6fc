// The in-memory master-key provider: RFC 3394 wrapping with OpenSSL, for unit tests only.
#include "pgkm/core/error.hpp"
#include "pgkm/provider/master_label.hpp"
#include "pgkm/provider/provider.hpp"

#include <openssl/evp.h>

#include <map>
#include <memory>

namespace pgkm::provider
{

namespace
{

using core::Error;
using core::ErrorKind;

constexpr std::size_t kMasterKeySize = 32;
constexpr std::size_t kDekSize = 32;
constexpr std::size_t kWrapOverhead = 8; // RFC 3394 integrity block
constexpr std::size_t kWrappedSize = kDekSize + kWrapOverhead;

// Frees an OpenSSL cipher context when the operation's scope ends.
struct CipherContextFree
{
	void operator()(EVP_CIPHER_CTX *context) const noexcept { EVP_CIPHER_CTX_free(context); }
};
using CipherContext = std::unique_ptr<EVP_CIPHER_CTX, CipherContextFree>;

// Creates a context set up for AES-256 key wrap (RFC 3394) in the given direction.
CipherContext WrapContext(const core::SecureBuffer &key, bool encrypt)
{
	CipherContext context(EVP_CIPHER_CTX_new());
	if (!context)
		throw Error(ErrorKind::Internal, "could not allocate a cipher context");
	EVP_CIPHER_CTX_set_flags(context.get(), EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
	if (EVP_CipherInit_ex(context.get(), EVP_aes_256_wrap(), nullptr, key.data(), nullptr,
						  encrypt ? 1 : 0) != 1)
		throw Error(ErrorKind::Internal, "could not set up AES key wrap");
	return context;
}

// Master keys as random bytes in locked memory, by label. Not thread-safe.
class MemoryProvider final : public Provider
{
  public:
	std::string Mechanism() const override;
	std::optional<std::string> FindNewestMasterKey(const std::string &base_label) override;
	void Generate(const std::string &label) override;
	std::vector<std::uint8_t> Wrap(const std::string &master_label, ByteView dek) override;
	core::SecureBuffer Unwrap(const std::string &master_label, ByteView wrapped) override;
	MasterKeyInfo Describe(const std::string &master_label) override;

  private:
	const core::SecureBuffer &Key(const std::string &label) const;

	std::map<std::string, core::SecureBuffer> keys_;
};

// Names the same mechanism as the PKCS#11 provider: the blobs have the same format.
std::string MemoryProvider::Mechanism() const
{
	return "CKM_AES_KEY_WRAP";
}

// Scans the held labels for the highest "<base>.vN".
std::optional<std::string> MemoryProvider::FindNewestMasterKey(const std::string &base_label)
{
	std::optional<std::string> newest;
	std::uint64_t newest_version = 0;
	for (const auto &entry : keys_)
	{
		const auto version = MasterKeyVersion(base_label, entry.first);
		if (version && *version > newest_version)
		{
			newest_version = *version;
			newest = entry.first;
		}
	}
	return newest;
}

// Draws a fresh random key for a new label.
void MemoryProvider::Generate(const std::string &label)
{
	if (label.empty())
		throw Error(ErrorKind::InvalidArgument, "master key label must not be empty");
	if (keys_.count(label) != 0)
		throw Error(ErrorKind::InvalidArgument, "master key \"" + label + "\" already exists");
	keys_.emplace(label, core::SecureBuffer::Random(kMasterKeySize));
}

// Wraps the DEK with AES-256 key wrap; the result is 40 bytes.
std::vector<std::uint8_t> MemoryProvider::Wrap(const std::string &master_label, ByteView dek)
{
	if (dek.size() != kDekSize)
		throw Error(ErrorKind::InvalidArgument, "a data encryption key must be 32 bytes");
	CipherContext context = WrapContext(Key(master_label), true);
	std::vector<std::uint8_t> wrapped(kWrappedSize);
	int length = 0;
	if (EVP_CipherUpdate(context.get(), wrapped.data(), &length, dek.data(),
						 static_cast<int>(dek.size())) != 1 ||
		static_cast<std::size_t>(length) != kWrappedSize)
		throw Error(ErrorKind::Internal, "AES key wrap failed");
	return wrapped;
}

// Unwraps and checks RFC 3394's integrity block; a failure means a foreign or altered blob.
core::SecureBuffer MemoryProvider::Unwrap(const std::string &master_label, ByteView wrapped)
{
	if (wrapped.size() != kWrappedSize)
		throw Error(ErrorKind::WrongMasterKey, "wrapped key has the wrong length",
					"expected " + std::to_string(kWrappedSize) + " bytes, got " +
						std::to_string(wrapped.size()));
	CipherContext context = WrapContext(Key(master_label), false);
	core::SecureBuffer dek(kDekSize);
	int length = 0;
	if (EVP_CipherUpdate(context.get(), dek.data(), &length, wrapped.data(),
						 static_cast<int>(wrapped.size())) != 1 ||
		static_cast<std::size_t>(length) != kDekSize)
		throw Error(ErrorKind::WrongMasterKey,
					"wrapped key does not unwrap under master key \"" + master_label + "\"",
					"AES key wrap integrity check failed");
	return dek;
}

// Reports fixed attributes: memory keys are neither persistent nor extractable through the API.
MasterKeyInfo MemoryProvider::Describe(const std::string &master_label)
{
	const core::SecureBuffer &key = Key(master_label);
	MasterKeyInfo info;
	info.label = master_label;
	info.key_bits = key.size() * 8;
	info.token = false;
	info.sensitive = true;
	info.extractable = false;
	info.can_wrap = true;
	info.can_unwrap = true;
	return info;
}

// Returns the key with this label or throws Error(UnknownKey).
const core::SecureBuffer &MemoryProvider::Key(const std::string &label) const
{
	const auto found = keys_.find(label);
	if (found == keys_.end())
		throw Error(ErrorKind::UnknownKey, "master key \"" + label + "\" not found");
	return found->second;
}

} // namespace

// Creates an empty in-memory provider.
std::unique_ptr<Provider> MakeMemoryProvider()
{
	return std::make_unique<MemoryProvider>();
}

} // namespace pgkm::provider
