// The PKCS#11 library as loaded into this process: dlopen, C_Initialize after every fork,
// C_Finalize by the last user, and the error helpers shared by the provider.
#include "pgkm/provider/pkcs11.hpp"
#include "pgkm/provider/provider.hpp"

#include <dlfcn.h>
#include <unistd.h>

#include <map>
#include <memory>
#include <mutex>

namespace pgkm::provider::pkcs11
{

namespace
{

using core::Error;
using core::ErrorKind;

// Every library loaded by providers of this process, by dlopen handle (the same file
// loaded under two paths is one library).
struct Registry
{
	std::mutex mutex;
	std::map<void *, std::unique_ptr<Module>> modules;
};

// Returns the registry; it is never destroyed, so providers held in static objects can
// still release their module while the process exits.
Registry &TheRegistry()
{
	static Registry *registry = new Registry;
	return *registry;
}

constexpr const char *kModuleHint =
	"Set pgkm.pkcs11_module to the token vendor's PKCS#11 library (SoftHSM2: "
	"/usr/lib/softhsm/libsofthsm2.so) and reload the configuration.";

// Returns dlerror()'s text, or a fallback when it has none.
std::string DlError()
{
	const char *text = dlerror();
	return text != nullptr ? text : "unknown dynamic loader error";
}

} // namespace

// Lists the return values after which a new session (or a new C_Initialize) may succeed.
bool IsSessionLoss(CK_RV rv) noexcept
{
	switch (rv)
	{
	case CKR_SESSION_HANDLE_INVALID:
	case CKR_SESSION_CLOSED:
	case CKR_USER_NOT_LOGGED_IN:
	case CKR_DEVICE_REMOVED:
	case CKR_TOKEN_NOT_PRESENT:
	case CKR_DEVICE_ERROR:
	case CKR_CRYPTOKI_NOT_INITIALIZED:
	case CKR_OBJECT_HANDLE_INVALID:
	case CKR_KEY_HANDLE_INVALID:
	case CKR_WRAPPING_KEY_HANDLE_INVALID:
	case CKR_UNWRAPPING_KEY_HANDLE_INVALID:
		return true;
	default:
		return false;
	}
}

// Formats the detail of a PKCS#11 error.
std::string Detail(const char *function, CK_RV rv)
{
	return std::string(function) + ": " + CkrName(rv);
}

// Turns a return value into the matching exception.
void Check(CK_RV rv, const char *function, ErrorKind kind, const std::string &message)
{
	if (rv == CKR_OK)
		return;
	if (IsSessionLoss(rv))
		throw SessionLost(rv, message, Detail(function, rv));
	throw Error(kind, message, Detail(function, rv));
}

// Records a freshly loaded library.
Module::Module(std::string path, void *handle, CK_FUNCTION_LIST *functions)
	: path_(std::move(path)), handle_(handle), functions_(functions)
{
}

// Loads with RTLD_LOCAL so the module's symbols never mix with the server's.
Module &Module::Acquire(const std::string &path)
{
	Registry &registry = TheRegistry();
	std::lock_guard lock(registry.mutex);

	dlerror();
	void *handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
	if (handle == nullptr)
		throw Error(ErrorKind::TokenUnavailable, "could not load PKCS#11 module \"" + path + "\"",
					DlError(), kModuleHint);

	const auto found = registry.modules.find(handle);
	if (found != registry.modules.end())
	{
		dlclose(handle); // the registry holds one reference per library
		++found->second->users_;
		return *found->second;
	}

	dlerror();
	auto get_function_list =
		reinterpret_cast<CK_C_GetFunctionList>(dlsym(handle, "C_GetFunctionList"));
	if (get_function_list == nullptr)
	{
		const std::string detail = DlError();
		dlclose(handle);
		throw Error(ErrorKind::TokenUnavailable,
					"\"" + path + "\" is not a PKCS#11 module: it has no C_GetFunctionList", detail,
					kModuleHint);
	}
	CK_FUNCTION_LIST *functions = nullptr;
	const CK_RV rv = get_function_list(&functions);
	if (rv != CKR_OK || functions == nullptr)
	{
		dlclose(handle);
		throw Error(ErrorKind::TokenUnavailable,
					"could not get the function list of PKCS#11 module \"" + path + "\"",
					Detail("C_GetFunctionList", rv), kModuleHint);
	}

	auto module = std::unique_ptr<Module>(new Module(path, handle, functions));
	module->users_ = 1;
	Module &result = *module;
	registry.modules.emplace(handle, std::move(module));
	return result;
}

// Finalises and unloads only in the process that initialised the library: in a fork
// child, C_Finalize could end the parent's sessions on a hardware token.
void Module::Release(Module &module) noexcept
{
	Registry &registry = TheRegistry();
	std::lock_guard lock(registry.mutex);

	if (--module.users_ > 0)
		return;
	const pid_t pid = getpid();
	if (module.initialised_pid_ != 0 && module.initialised_pid_ != pid)
		return; // inherited through fork: leave the library as the parent left it
	if (module.initialised_pid_ == pid)
		module.functions_->C_Finalize(nullptr);
	void *handle = module.handle_;
	registry.modules.erase(handle); // destroys module
	dlclose(handle);
}

// Calls C_Initialize once per process. CKR_CRYPTOKI_ALREADY_INITIALIZED means state
// inherited from a parent process (or left by another user of the library), which is not
// valid here: finalise it and initialise again.
std::uint64_t Module::EnsureInitialised()
{
	std::lock_guard lock(TheRegistry().mutex);

	const pid_t pid = getpid();
	if (initialised_pid_ == pid)
		return generation_;

	CK_C_INITIALIZE_ARGS args{};
	args.flags = CKF_OS_LOCKING_OK;
	CK_RV rv = functions_->C_Initialize(&args);
	if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED)
	{
		functions_->C_Finalize(nullptr);
		rv = functions_->C_Initialize(&args);
	}
	if (rv != CKR_OK)
		throw Error(ErrorKind::TokenUnavailable,
					"could not initialise PKCS#11 module \"" + path_ + "\"",
					Detail("C_Initialize", rv),
					"Check the module's own configuration and logs; pgkm initialises it again at "
					"the next call.");
	initialised_pid_ = pid;
	++generation_;
	return generation_;
}

// Compares both the process and the generation: a fork child has the parent's generation.
bool Module::IsCurrent(std::uint64_t generation) const noexcept
{
	std::lock_guard lock(TheRegistry().mutex);
	return initialised_pid_ == getpid() && generation_ == generation;
}

// Forgets the initialisation, unless a newer one happened meanwhile.
void Module::MarkLost(std::uint64_t generation) noexcept
{
	std::lock_guard lock(TheRegistry().mutex);
	if (initialised_pid_ == getpid() && generation_ == generation)
		initialised_pid_ = 0;
}

// Counts the providers of this process that hold the library.
int Module::users() const noexcept
{
	std::lock_guard lock(TheRegistry().mutex);
	return users_;
}

} // namespace pgkm::provider::pkcs11
