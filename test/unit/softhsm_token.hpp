// Test fixture helpers: a throwaway SoftHSM2 token in a temporary directory, and a raw
// PKCS#11 session on it for checks that must not go through the provider.
#pragma once

#include "pgkm/provider/provider.hpp"

#include <p11-kit/pkcs11.h>

#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace pgkm::test
{

// A freshly initialised SoftHSM2 token, its configuration file and a PIN file, all in a
// temporary directory that the destructor removes. SoftHSM reads SOFTHSM2_CONF at
// C_Initialize, so create providers after this object and destroy them before it.
class SoftHsmToken
{
  public:
	struct Options
	{
		std::string label = "pgkm-test";
		std::string user_pin = "4711-user";
		std::string so_pin = "0815-so";
		bool reset_on_fork = true;
	};

	// Creates the directory, writes softhsm2.conf, points SOFTHSM2_CONF at it, initialises
	// a token with softhsm2-util and writes the PIN file with mode 0600.
	SoftHsmToken() : SoftHsmToken(Options{}) {}
	explicit SoftHsmToken(Options options) : options_(std::move(options))
	{
		std::string pattern =
			(std::filesystem::temp_directory_path() / "pgkm-softhsm-XXXXXX").string();
		if (mkdtemp(pattern.data()) == nullptr)
			throw std::runtime_error("mkdtemp failed");
		dir_ = pattern;
		std::filesystem::create_directory(dir_ + "/tokens");
		conf_ = dir_ + "/softhsm2.conf";
		{
			std::ofstream conf(conf_);
			conf << "directories.tokendir = " << dir_ << "/tokens\n"
				 << "objectstore.backend = file\n"
				 << "log.level = ERROR\n"
				 << "slots.removable = false\n"
				 << "library.reset_on_fork = " << (options_.reset_on_fork ? "true" : "false")
				 << "\n";
		}
		setenv("SOFTHSM2_CONF", conf_.c_str(), 1);
		Run({"softhsm2-util", "--init-token", "--free", "--label", options_.label, "--so-pin",
			 options_.so_pin, "--pin", options_.user_pin});
		pin_file_ = dir_ + "/pin";
		WriteFile(pin_file_, options_.user_pin + "\n", 0600);
	}

	// Removes the token directory and everything in it.
	~SoftHsmToken()
	{
		std::error_code ignored;
		std::filesystem::remove_all(dir_, ignored);
	}

	SoftHsmToken(const SoftHsmToken &) = delete;
	SoftHsmToken &operator=(const SoftHsmToken &) = delete;

	const std::string &dir() const { return dir_; }
	const std::string &label() const { return options_.label; }
	const std::string &user_pin() const { return options_.user_pin; }
	const std::string &pin_file() const { return pin_file_; }

	// Returns a provider configuration for this token.
	provider::Pkcs11Config Config() const
	{
		return provider::Pkcs11Config{PGKM_SOFTHSM_MODULE, options_.label, pin_file_};
	}

	// Writes a file with exactly these contents and permission bits.
	static void WriteFile(const std::string &path, const std::string &contents, mode_t mode)
	{
		{
			std::ofstream file(path, std::ios::binary | std::ios::trunc);
			file << contents;
		}
		if (chmod(path.c_str(), mode) != 0)
			throw std::runtime_error("chmod failed: " + path);
	}

  private:
	// Runs a command with its output discarded; throws unless it exits with status 0.
	static void Run(const std::vector<std::string> &argv)
	{
		const pid_t pid = fork();
		if (pid < 0)
			throw std::runtime_error("fork failed");
		if (pid == 0)
		{
			const int null_fd = open("/dev/null", O_WRONLY);
			dup2(null_fd, STDOUT_FILENO);
			dup2(null_fd, STDERR_FILENO);
			std::vector<char *> args;
			for (const std::string &arg : argv)
				args.push_back(const_cast<char *>(arg.c_str()));
			args.push_back(nullptr);
			execvp(args[0], args.data());
			_exit(127);
		}
		int status = 0;
		if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
			throw std::runtime_error("command failed: " + argv[0]);
	}

	Options options_;
	std::string dir_;
	std::string conf_;
	std::string pin_file_;
};

// A second, independent user of the SoftHSM module in this process, calling the function
// list directly. dlopen of the same file shares the module's state with the provider: it
// initialises the library only if nobody has, and finalises only what it initialised.
class RawPkcs11
{
  public:
	// Loads the module, initialises it if needed and finds the token's slot.
	explicit RawPkcs11(const std::string &token_label)
	{
		handle_ = dlopen(PGKM_SOFTHSM_MODULE, RTLD_NOW | RTLD_LOCAL);
		if (handle_ == nullptr)
			throw std::runtime_error("dlopen failed");
		auto get = reinterpret_cast<CK_C_GetFunctionList>(dlsym(handle_, "C_GetFunctionList"));
		if (get == nullptr || get(&f_) != CKR_OK)
			throw std::runtime_error("C_GetFunctionList failed");
		CK_C_INITIALIZE_ARGS args{};
		args.flags = CKF_OS_LOCKING_OK;
		const CK_RV rv = f_->C_Initialize(&args);
		if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED)
			throw std::runtime_error("C_Initialize failed");
		initialised_ = rv == CKR_OK;

		CK_ULONG count = 0;
		f_->C_GetSlotList(CK_TRUE, nullptr, &count);
		std::vector<CK_SLOT_ID> slots(count);
		f_->C_GetSlotList(CK_TRUE, slots.data(), &count);
		std::string padded = token_label;
		padded.resize(32, ' ');
		for (CK_ULONG i = 0; i < count; ++i)
		{
			CK_TOKEN_INFO info;
			if (f_->C_GetTokenInfo(slots[i], &info) == CKR_OK &&
				std::memcmp(info.label, padded.data(), 32) == 0)
			{
				slot_ = slots[i];
				return;
			}
		}
		throw std::runtime_error("token not found");
	}

	// Closes the session, finalises if this object initialised, and drops the reference.
	~RawPkcs11()
	{
		if (session_ != CK_INVALID_HANDLE)
			f_->C_CloseSession(session_);
		if (initialised_)
			f_->C_Finalize(nullptr);
		dlclose(handle_);
	}

	RawPkcs11(const RawPkcs11 &) = delete;
	RawPkcs11 &operator=(const RawPkcs11 &) = delete;

	CK_FUNCTION_LIST *functions() const { return f_; }
	CK_SLOT_ID slot() const { return slot_; }

	// Opens a read-write session and logs in as the user (already-logged-in is fine).
	CK_SESSION_HANDLE OpenUserSession(const std::string &pin)
	{
		if (f_->C_OpenSession(slot_, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr,
							  &session_) != CKR_OK)
			throw std::runtime_error("C_OpenSession failed");
		auto *pin_bytes = reinterpret_cast<CK_UTF8CHAR *>(const_cast<char *>(pin.data()));
		const CK_RV rv = f_->C_Login(session_, CKU_USER, pin_bytes, pin.size());
		if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
			throw std::runtime_error("C_Login failed");
		return session_;
	}

	// Returns the handles of the secret keys carrying this label.
	std::vector<CK_OBJECT_HANDLE> FindSecretKeys(const std::string &label)
	{
		CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
		CK_ATTRIBUTE search[] = {
			{CKA_CLASS, &key_class, sizeof key_class},
			{CKA_LABEL, const_cast<char *>(label.data()), label.size()},
		};
		std::vector<CK_OBJECT_HANDLE> found(16);
		CK_ULONG count = 0;
		f_->C_FindObjectsInit(session_, search, 2);
		f_->C_FindObjects(session_, found.data(), found.size(), &count);
		f_->C_FindObjectsFinal(session_);
		found.resize(count);
		return found;
	}

	// Counts the secret keys that are session objects (CKA_TOKEN false) in the token.
	std::size_t CountSessionSecretKeys()
	{
		CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
		CK_BBOOL no = CK_FALSE;
		CK_ATTRIBUTE search[] = {
			{CKA_CLASS, &key_class, sizeof key_class},
			{CKA_TOKEN, &no, sizeof no},
		};
		std::vector<CK_OBJECT_HANDLE> found(64);
		CK_ULONG count = 0;
		f_->C_FindObjectsInit(session_, search, 2);
		f_->C_FindObjects(session_, found.data(), found.size(), &count);
		f_->C_FindObjectsFinal(session_);
		return count;
	}

	// Generates an AES key with this label (a token object unless token is false),
	// bypassing the provider's checks.
	CK_RV GenerateAesKey(const std::string &label, CK_BBOOL token = CK_TRUE)
	{
		CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
		CK_KEY_TYPE key_type = CKK_AES;
		CK_ULONG value_len = 32;
		CK_BBOOL yes = CK_TRUE;
		CK_ATTRIBUTE key_template[] = {
			{CKA_CLASS, &key_class, sizeof key_class},
			{CKA_KEY_TYPE, &key_type, sizeof key_type},
			{CKA_VALUE_LEN, &value_len, sizeof value_len},
			{CKA_TOKEN, &token, sizeof token},
			{CKA_PRIVATE, &yes, sizeof yes},
			{CKA_WRAP, &yes, sizeof yes},
			{CKA_UNWRAP, &yes, sizeof yes},
			{CKA_LABEL, const_cast<char *>(label.data()), label.size()},
		};
		CK_MECHANISM mechanism{CKM_AES_KEY_GEN, nullptr, 0};
		CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
		return f_->C_GenerateKey(session_, &mechanism, key_template,
								 sizeof key_template / sizeof key_template[0], &key);
	}

  private:
	void *handle_ = nullptr;
	CK_FUNCTION_LIST *f_ = nullptr;
	bool initialised_ = false;
	CK_SLOT_ID slot_ = 0;
	CK_SESSION_HANDLE session_ = CK_INVALID_HANDLE;
};

} // namespace pgkm::test
