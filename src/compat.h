/*
 * compat.h: the few Lua 5.2+ API calls the binding uses, for Lua 5.1 and
 * LuaJIT (OpenResty). It does something only when LUA_VERSION_NUM == 501;
 * every other file is written against the 5.4 API.
 */
#ifndef CMS_COMPAT_H
#define CMS_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM == 501

#define lua_rawlen(L, i) lua_objlen((L), (i))
#define lua_setuservalue(L, i) lua_setfenv((L), (i))
#define lua_getuservalue(L, i) lua_getfenv((L), (i))

/* LuaJIT 2.1 declares luaL_setfuncs itself: define ours under another name. */
static inline void cms_compat_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
    luaL_checkstack(L, nup, "too many upvalues");
    for (; l->name; l++) {
        int i;
        for (i = 0; i < nup; i++)
            lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}
#define luaL_setfuncs cms_compat_setfuncs

#endif

#if LUA_VERSION_NUM < 503
/* Integers are doubles with no fraction before 5.3. */
static inline int cms_compat_isinteger(lua_State *L, int i)
{
    lua_Number n;
    if (lua_type(L, i) != LUA_TNUMBER)
        return 0;
    n = lua_tonumber(L, i);
    /* range first: converting inf, NaN or a huge value is undefined */
    return n >= -9007199254740992.0 && n <= 9007199254740992.0 &&
           n == (lua_Number)(long long)n;
}
#define lua_isinteger cms_compat_isinteger
/* lua_Integer may be 32 bits before 5.3: read integers through the double. */
#define cms_tolonglong(L, i) ((long long)lua_tonumber((L), (i)))
#else
#define cms_tolonglong(L, i) ((long long)lua_tointeger((L), (i)))
#endif

#endif
