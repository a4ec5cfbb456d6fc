// pgkm's settings (GUCs). Defined in one place; read by the other glue files.
#pragma once

namespace pgkm::pg
{

inline constexpr int kKeyCacheTtlDefault = 300; // seconds
inline constexpr int kKeyCacheTtlMin = 1;
inline constexpr int kKeyCacheTtlMax = 86400;

extern char *guc_pkcs11_module;
extern char *guc_pkcs11_token_label;
extern char *guc_pkcs11_pin_file;
extern char *guc_master_key_label;
extern int guc_key_cache_ttl;

// Defines every pgkm.* setting and reserves the prefix.
void GucInit();

} // namespace pgkm::pg
