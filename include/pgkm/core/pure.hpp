// Guard for the pure layers: core and provider headers must never see the server headers.
#pragma once

#ifdef POSTGRES_H
#error "pgkm core/provider headers must not be compiled together with postgres.h"
#endif
