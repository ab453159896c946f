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

/*
 * cms_tointeger: 1 and the value in *out if the value at `i` is a number with
 * an exact integer value (3, 3.0, 2^30; not 3.5, not the string "3").
 */
#if LUA_VERSION_NUM < 503
/* Numbers are doubles, and lua_Integer may be 32 bits: go through the double. */
static inline int cms_tointeger(lua_State *L, int i, long long *out)
{
    lua_Number n;
    if (lua_type(L, i) != LUA_TNUMBER)
        return 0;
    n = lua_tonumber(L, i);
    /* range first: converting inf, NaN or a huge value is undefined */
    if (!(n >= -9007199254740992.0 && n <= 9007199254740992.0) ||
        n != (lua_Number)(long long)n)
        return 0;
    *out = (long long)n;
    return 1;
}
#else
static inline int cms_tointeger(lua_State *L, int i, long long *out)
{
    int exact = 0;
    lua_Integer v;
    if (lua_type(L, i) != LUA_TNUMBER)
        return 0;
    v = lua_tointegerx(L, i, &exact); /* floats convert only when exact */
    *out = (long long)v;
    return exact;
}
#endif

#endif
