"""The compiled MettaGrid simulation: one call steps every env and every agent of a batch.

All state lives in a handful of NumPy arrays owned by ``MettaGridEnv`` (see ``env.py`` for the layout); the
functions here are numba-compiled and cached on disk, so only the first import on a machine pays for
compilation. Column indices of the packed state arrays are the module constants below.

Grid cells: ``grid_agent`` holds 0 or (local agent index + 1); ``grid_obj`` holds 0 (empty), a converter
(local converter index + 1) or a static object (``-type_id``: walls and blocks, which have no state but
their position; ``-(type_id + 256)`` when swappable). Both are strided views of one interleaved int16 array,
whose int32 view ``grid_pair`` gives a cell's contents in one load. ``occ`` is the occupancy bitmap of the same
cells (see ``occ_row_bits``): the observation scan reads it to visit only the occupied cells of a window.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

from metta.mettagrid.constants import (
    COLOR,
    CONVERTING,
    EPISODE_COMPLETION_PCT,
    FROZEN,
    GLYPH,
    GROUP,
    H_ATTACK,
    H_CHANGE_COLOR,
    H_CHANGE_GLYPH,
    H_GET,
    H_MOVE,
    H_NOOP,
    H_PUT,
    H_ROTATE,
    H_SWAP,
    INVENTORY_BASE,
    LAST_ACTION,
    LAST_ACTION_ARG,
    LAST_REWARD,
    ORIENTATION,
    RESOURCE_REWARDS,
    SWAPPABLE,
    TYPE_ID,
)
from metta.mettagrid.game_tables import STAT_BLOCK_INDEX as _SB

# env_i columns (int64[E, ...]).
(
    E_H,
    E_W,
    E_GRID_OFF,
    E_CONV_OFF,
    E_CONV_N,
    E_STEP,
    E_MAX_STEPS,
    E_NEXT_EVENT,
    E_HAS_STAT_RW,
    E_DONE,
    E_TRUNCATES,
    E_SHARE,
    E_STRIDE,
    E_SLOT_OFF,
    E_MARK_N,
) = range(15)
ENV_COLS = 15
# Changed cells. An agent's window tokens change only when something in its window changes, so each step
# records the cells whose observable state it changed (env_marks[e, :E_MARK_N] = (row, col); E_MARK_N = -1
# when too many, or everything, changed) and an agent with no marked cell in its window rewrites only its
# global tokens: its window tokens from the previous step are still in the buffer and still true.
MARK_CAP = 32
# Each env's grid slot has GRID_PAD empty cells around the map, so the observation window (at most 15x15)
# never needs a bounds check: cells off the map read as empty. E_GRID_OFF is the index of map cell (0, 0),
# E_STRIDE the padded row length, E_SLOT_OFF where the slot starts.
GRID_PAD = 7
# Static objects are stored as -type_id, or -(type_id + SWAPPABLE_STATIC) when they can be swapped (blocks).
SWAPPABLE_STATIC = 256
# conv_i columns (int32[C, ...]).
C_TYPE, C_R, C_C, C_COLOR, C_MAXOUT, C_TICKS, C_COOLDOWN, C_STATE, C_END, C_RECIPE_OBS = range(10)
CONV_COLS = 10
CONV_IDLE, CONV_CONVERTING, CONV_COOLING = 0, 1, 2
# agent_i columns (int32[A, ...]).
(
    A_R,
    A_C,
    A_ORIENT,
    A_FROZEN,
    A_FREEZE_DUR,
    A_COLOR,
    A_GLYPH,
    A_GROUP,
    A_GROUP_ID,
    A_LAST_ACT,
    A_LAST_ARG,
    A_SUCCESS,
    A_OBS_N,
    A_OBS_WANT,
    A_RW_BITS,
) = range(15)
# A_OBS_N: tokens written in the agent's previous observation; A_OBS_WANT: tokens it wanted (written + dropped),
# or -1 when its buffer does not hold a complete previous observation (the next one is written in full).
# A_RW_BITS: the agent's resource_rewards token (game_tables.resource_reward_bits of its group).
AGENT_COLS = 15
# agent_f columns (float32[A, ...]).
F_PENALTY, F_GROUP_PCT, F_EP_REWARD, F_STAT_RW = range(4)
AGENT_FCOLS = 4
# params (int64[...]).
P_N_AGENTS, P_TOKENS, P_OH, P_OW, P_G_COMPLETION, P_G_LAST_ACTION, P_G_LAST_REWARD, P_G_RESOURCE_RW, P_TRACK_MOVE = (
    range(9)
)
PARAM_COLS = 9
# env_game_stats columns (float64[E, 3]).
G_TOKENS_WRITTEN, G_TOKENS_DROPPED, G_TOKENS_FREE = range(3)

# Stat blocks (offsets into agent_stats rows come from the layout's stat_offsets array).
SB_ACT_SUCCESS = _SB["act_success"]
SB_ACT_FAILED = _SB["act_failed"]
SB_INVALID_TYPE = _SB["invalid_type"]
SB_INVALID_ARG = _SB["invalid_arg"]
SB_INVALID_ARG_TYPE = _SB["invalid_arg_type"]
SB_FAILURE_PENALTY = _SB["failure_penalty"]
SB_GAINED = _SB["gained"]
SB_LOST = _SB["lost"]
SB_PUT = _SB["put"]
SB_GET = _SB["get"]
SB_FROZEN = _SB["frozen"]
SB_FROZEN_GROUP = _SB["frozen_group"]
SB_MOVE_DIR = _SB["move_dir"]
SB_ROT_TO = _SB["rot_to"]
SB_SEQ_ROT = _SB["seq_rot"]
SB_SWAP_TYPE = _SB["swap_type"]
SB_ATT_HIT = _SB["att_hit"]
SB_ATT_HIT_BY = _SB["att_hit_by"]
SB_ATT_FF = _SB["att_ff"]
SB_ATT_STEAL = _SB["att_steal"]
SB_ATT_WASTED = _SB["att_wasted"]
SB_ATT_BLOCKED = _SB["att_blocked"]

# Orientation -> (dr, dc) of "forward".
_FWD_R = np.array([-1, 1, 0, 0], dtype=np.int64)
_FWD_C = np.array([0, 0, -1, 1], dtype=np.int64)

jit = numba.njit(cache=True, nogil=True, boundscheck=False)


# Occupancy bitmap: bit ``cell & 63`` of word ``cell >> 6`` is set when grid cell ``cell`` holds an agent or an
# object. The observation scan reads one or two words per window row instead of every window cell, and visits
# only the occupied cells (a quarter to a half of the window on terrain maps, a few percent in open rooms).


@jit
def lowest_bit_index(x):
    """Index of the lowest set bit of a non-zero uint64 (one tzcnt instruction)."""
    return np.int64(trailing_zeros(x))


@jit
def occ_set(occ, cell):
    occ[cell >> 6] |= np.uint64(1) << np.uint64(cell & 63)


@jit
def occ_clear(occ, cell):
    occ[cell >> 6] &= ~(np.uint64(1) << np.uint64(cell & 63))


@jit
def occ_clear_range(occ, start, end):
    """Clear the bits of cells start .. end-1."""
    cell = start
    while cell < end and cell & 63:
        occ_clear(occ, cell)
        cell += 1
    while cell + 64 <= end:
        occ[cell >> 6] = np.uint64(0)
        cell += 64
    while cell < end:
        occ_clear(occ, cell)
        cell += 1


@jit
def occ_row_bits(occ, start, width):
    """Bits of the ``width`` cells from flat index ``start`` (bit j = cell start + j)."""
    w = start >> 6
    lo = start & 63
    bits = occ[w] >> np.uint64(lo)
    if lo + width > 64:
        bits |= occ[w + 1] << np.uint64(64 - lo)
    return bits & ((np.uint64(1) << np.uint64(width)) - np.uint64(1))


@jit
def rng_next(env_rng, e):
    """xorshift64* step of env ``e``'s generator; returns 32 random bits."""
    x = env_rng[e]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    env_rng[e] = x
    return (x * np.uint64(0x2545F4914F6CDD1D)) >> np.uint64(32)


@jit
def mark_cell(env_i, env_marks, e, r, c):
    """Record that cell (r, c) of env ``e`` looks different this step (see MARK_CAP)."""
    n = env_i[e, E_MARK_N]
    if n < 0:
        return
    if n >= env_marks.shape[1]:
        env_i[e, E_MARK_N] = -1
        return
    env_marks[e, n, 0] = r
    env_marks[e, n, 1] = c
    env_i[e, E_MARK_N] = n + 1


@jit
def stat_add(agent_stats, a, stat_off, block, sub, amount):
    agent_stats[a, stat_off[block] + sub] += amount


@jit
def update_inventory(a, item, delta, agent_inv, agent_limit, agent_rw, agent_stats, stat_off, rewards):
    """Add ``delta`` of ``item`` to agent ``a``, clamped to [0, limit]; update stats and inventory reward.

    Returns the change actually applied.
    """
    old = agent_inv[a, item]
    new = old + delta
    if new < 0:
        new = 0
    limit = agent_limit[a, item]
    if new > limit:
        new = limit
    applied = new - old
    if applied == 0:
        return 0
    agent_inv[a, item] = new
    if applied > 0:
        agent_stats[a, stat_off[SB_GAINED] + item] += applied
    else:
        agent_stats[a, stat_off[SB_LOST] + item] -= applied
    per_unit = agent_rw[a, 0, item]
    if per_unit != 0.0:
        cap = agent_rw[a, 1, item]
        r_old = min(per_unit * old, cap)
        r_new = min(per_unit * new, cap)
        rewards[a] += r_new - r_old
    return applied


@jit
def maybe_start_converting(ci, step, env_i, e, conv_i, conv_inv, conv_recipe, n_items):
    """Start a conversion if the converter is idle, has room for output, and holds every input."""
    if conv_i[ci, C_STATE] != CONV_IDLE:
        return
    max_out = conv_i[ci, C_MAXOUT]
    if max_out >= 0:
        held = 0
        for i in range(n_items):
            if conv_recipe[ci, 1, i] > 0:
                held += conv_inv[ci, i]
        if held >= max_out:
            return
    for i in range(n_items):
        if conv_inv[ci, i] < conv_recipe[ci, 0, i]:
            return
    for i in range(n_items):
        conv_inv[ci, i] -= conv_recipe[ci, 0, i]
    conv_i[ci, C_STATE] = CONV_CONVERTING
    end = step + conv_i[ci, C_TICKS]
    conv_i[ci, C_END] = end
    if end < env_i[e, E_NEXT_EVENT]:
        env_i[e, E_NEXT_EVENT] = end


@jit
def process_events(e, env_i, conv_i, conv_inv, conv_recipe, n_items, env_marks):
    """Finish conversions and cooldowns that are due at this step (upstream's event queue, as timers)."""
    step = env_i[e, E_STEP]
    if step < env_i[e, E_NEXT_EVENT]:
        return
    off = env_i[e, E_CONV_OFF]
    nxt = np.int64(1) << 62
    for k in range(env_i[e, E_CONV_N]):
        ci = off + k
        state = conv_i[ci, C_STATE]
        if state != CONV_IDLE and conv_i[ci, C_END] <= step:
            mark_cell(env_i, env_marks, e, conv_i[ci, C_R], conv_i[ci, C_C])
            if state == CONV_CONVERTING:
                for i in range(n_items):
                    v = conv_inv[ci, i] + conv_recipe[ci, 1, i]
                    conv_inv[ci, i] = 255 if v > 255 else v
                if conv_i[ci, C_COOLDOWN] > 0:
                    conv_i[ci, C_STATE] = CONV_COOLING
                    conv_i[ci, C_END] = step + conv_i[ci, C_COOLDOWN]
                else:
                    conv_i[ci, C_STATE] = CONV_IDLE
                    maybe_start_converting(ci, step, env_i, e, conv_i, conv_inv, conv_recipe, n_items)
            else:
                conv_i[ci, C_STATE] = CONV_IDLE
                maybe_start_converting(ci, step, env_i, e, conv_i, conv_inv, conv_recipe, n_items)
        if conv_i[ci, C_STATE] != CONV_IDLE and conv_i[ci, C_END] < nxt:
            nxt = conv_i[ci, C_END]
    env_i[e, E_NEXT_EVENT] = nxt


@jit
def front_cell(r, c, orient, H, W):
    """The cell in front of (r, c), clamped to the grid (so at an edge it is the cell itself)."""
    fr = r + _FWD_R[orient]
    fc = c + _FWD_C[orient]
    if fr < 0:
        fr = 0
    elif fr >= H:
        fr = H - 1
    if fc < 0:
        fc = 0
    elif fc >= W:
        fc = W - 1
    return fr, fc


@jit
def do_attack(
    a,
    e,
    arg,
    agent_base,
    goff,
    S,
    H,
    W,
    grid_agent,
    agent_i,
    agent_inv,
    agent_limit,
    agent_rw,
    agent_stats,
    stat_off,
    rewards,
    defense,
    n_items,
    n_groups,
):
    """Attack the arg-th agent found in the 3x3 block ahead (nearest row first, centre, left, right)."""
    orient = agent_i[a, A_ORIENT]
    fr, fc = _FWD_R[orient], _FWD_C[orient]
    # The agent's right-hand side: facing up it is +column.
    rr, rc = fc, -fr
    r0, c0 = agent_i[a, A_R], agent_i[a, A_C]
    target = -1
    found = 0
    for dist in range(1, 4):
        for lat in (0, -1, 1):
            r = r0 + fr * dist + rr * lat
            c = c0 + fc * dist + rc * lat
            if r < 0 or r >= H or c < 0 or c >= W:
                continue
            v = grid_agent[goff + r * S + c]
            if v != 0:
                target = agent_base + v - 1
                found += 1
                if found > arg:
                    break
        if found > arg:
            break
    if target < 0:
        return False
    g_a = agent_i[a, A_GROUP]
    g_t = agent_i[target, A_GROUP]
    has_defense = False
    for i in range(n_items):
        if defense[i] > 0:
            has_defense = True
            if agent_inv[target, i] < defense[i]:
                has_defense = False
                break
    if has_defense:
        for i in range(n_items):
            if defense[i] > 0:
                update_inventory(
                    target, i, -defense[i], agent_inv, agent_limit, agent_rw, agent_stats, stat_off, rewards
                )
        agent_stats[a, stat_off[SB_ATT_BLOCKED] + g_a * n_groups + g_t] += 1
        return True
    was_frozen = agent_i[target, A_FROZEN] > 0
    agent_i[target, A_FROZEN] = agent_i[target, A_FREEZE_DUR]
    agent_stats[a, stat_off[SB_ATT_HIT] + g_a * n_groups + g_t] += 1
    agent_stats[target, stat_off[SB_ATT_HIT_BY] + g_t * n_groups + g_a] += 1
    if g_a == g_t:
        agent_stats[a, stat_off[SB_ATT_FF] + g_a] += 1
    if was_frozen:
        agent_stats[a, stat_off[SB_ATT_WASTED] + g_a] += 1
        return True
    for i in range(n_items):
        n = agent_inv[target, i]
        if n > 0:
            taken = update_inventory(a, i, n, agent_inv, agent_limit, agent_rw, agent_stats, stat_off, rewards)
            if taken > 0:
                update_inventory(target, i, -taken, agent_inv, agent_limit, agent_rw, agent_stats, stat_off, rewards)
                agent_stats[a, stat_off[SB_ATT_STEAL] + (g_a * n_items + i) * n_groups + g_t] += taken
    return True


@jit
def do_action(
    a,
    e,
    handler,
    arg,
    agent_base,
    env_i,
    grid_agent,
    grid_obj,
    conv_i,
    conv_inv,
    conv_recipe,
    agent_i,
    agent_inv,
    agent_limit,
    agent_rw,
    agent_stats,
    stat_off,
    rewards,
    defense,
    n_items,
    n_groups,
    track_move,
    occ,
):
    """Run one action of agent ``a``; returns whether it succeeded."""
    H = env_i[e, E_H]
    W = env_i[e, E_W]
    goff = env_i[e, E_GRID_OFF]
    S = env_i[e, E_STRIDE]
    r = agent_i[a, A_R]
    c = agent_i[a, A_C]
    orient = agent_i[a, A_ORIENT]
    if handler == H_NOOP:
        return True
    if handler == H_MOVE:
        d = orient
        if arg == 1:  # backward: the opposite direction (up<->down, left<->right)
            d = orient ^ 1
        nr = r + _FWD_R[d]
        nc = c + _FWD_C[d]
        if nr < 0 or nr >= H or nc < 0 or nc >= W:
            return False
        cell = goff + nr * S + nc
        if grid_agent[cell] != 0 or grid_obj[cell] != 0:
            return False
        grid_agent[cell] = grid_agent[goff + r * S + c]
        grid_agent[goff + r * S + c] = 0
        occ_set(occ, cell)  # a move is the only action that changes which cells are occupied (swaps trade places)
        occ_clear(occ, goff + r * S + c)
        agent_i[a, A_R] = nr
        agent_i[a, A_C] = nc
        if track_move:
            agent_stats[a, stat_off[SB_MOVE_DIR] + d] += 1
        return True
    if handler == H_ROTATE:
        agent_i[a, A_ORIENT] = arg
        if track_move:
            agent_stats[a, stat_off[SB_ROT_TO] + arg] += 1
        return True
    if handler == H_ATTACK:
        return do_attack(
            a,
            e,
            arg,
            agent_base,
            goff,
            S,
            H,
            W,
            grid_agent,
            agent_i,
            agent_inv,
            agent_limit,
            agent_rw,
            agent_stats,
            stat_off,
            rewards,
            defense,
            n_items,
            n_groups,
        )
    if handler == H_CHANGE_COLOR:
        col = agent_i[a, A_COLOR]
        if arg == 0:
            col += 1
        elif arg == 1:
            col -= 1
        elif arg == 2:
            col += 63
        else:
            col -= 63
        agent_i[a, A_COLOR] = col & 255
        return True
    if handler == H_CHANGE_GLYPH:
        agent_i[a, A_GLYPH] = arg
        return True
    fr, fc = front_cell(r, c, orient, H, W)
    fcell = goff + fr * S + fc
    if handler == H_SWAP:
        if fr == r and fc == c:
            return False
        here = goff + r * S + c
        obj = grid_obj[fcell]
        if obj <= -SWAPPABLE_STATIC:
            grid_obj[here] = obj
            grid_obj[fcell] = 0
            grid_agent[fcell] = grid_agent[here]
            grid_agent[here] = 0
            agent_i[a, A_R] = fr
            agent_i[a, A_C] = fc
            agent_stats[a, stat_off[SB_SWAP_TYPE] + ((-obj) & 255)] += 1
            return True
        other = grid_agent[fcell]
        if other != 0 and obj == 0:
            o = agent_base + other - 1
            if agent_i[o, A_FROZEN] > 0:
                grid_agent[fcell] = grid_agent[here]
                grid_agent[here] = other
                agent_i[o, A_R] = r
                agent_i[o, A_C] = c
                agent_i[a, A_R] = fr
                agent_i[a, A_C] = fc
                agent_stats[a, stat_off[SB_SWAP_TYPE]] += 1
                return True
        return False
    # put_items / get_items act on the converter in front.
    obj = grid_obj[fcell]
    if obj <= 0:
        return False
    ci = env_i[e, E_CONV_OFF] + obj - 1
    step = env_i[e, E_STEP]
    moved = False
    if handler == H_PUT:
        for i in range(n_items):
            need = conv_recipe[ci, 0, i]
            if need > 0:
                n = min(need, agent_inv[a, i], 255 - conv_inv[ci, i])
                if n > 0:
                    update_inventory(a, i, -n, agent_inv, agent_limit, agent_rw, agent_stats, stat_off, rewards)
                    conv_inv[ci, i] += n
                    agent_stats[a, stat_off[SB_PUT] + i] += n
                    moved = True
    elif handler == H_GET:
        for i in range(n_items):
            if conv_recipe[ci, 1, i] > 0 and conv_inv[ci, i] > 0:
                taken = update_inventory(
                    a, i, conv_inv[ci, i], agent_inv, agent_limit, agent_rw, agent_stats, stat_off, rewards
                )
                if taken > 0:
                    conv_inv[ci, i] -= taken
                    agent_stats[a, stat_off[SB_GET] + i] += taken
                    moved = True
    if moved:
        maybe_start_converting(ci, step, env_i, e, conv_i, conv_inv, conv_recipe, n_items)
    return moved


@jit
def emit(out, n, T, loc, feature, value):
    """Write one token if there is room; return the count of tokens wanted so far (room or not)."""
    if n < T:
        out[n, 0] = loc
        out[n, 1] = feature
        out[n, 2] = value
    return n + 1


@jit
def write_agent_obs(
    a,
    e,
    agent_base,
    env_i,
    grid_pair,
    conv_i,
    conv_inv,
    conv_recipe,
    agent_i,
    agent_inv,
    rewards,
    obs,
    obs_offsets,
    cell_deltas,
    params,
    n_items,
    env_game_stats,
    occ,
    obs_rank,
    full,
):
    """Write agent ``a``'s token observation: global tokens, then the window in distance order.

    Tokens that do not fit are counted as dropped; unused slots are filled with 0xFF. ``cell_deltas[k]`` is
    the grid-index offset of window cell k in this env (precomputed once per env and step). With ``full``
    false only the global tokens are written: the window is unchanged since the previous observation.
    """
    T = params[P_TOKENS]
    oh = params[P_OH]
    ow = params[P_OW]
    center = ((oh // 2) << 4) | (ow // 2)
    goff = env_i[e, E_GRID_OFF]
    S = env_i[e, E_STRIDE]
    coff = env_i[e, E_CONV_OFF]
    out = obs[a]
    n = 0
    if params[P_G_COMPLETION]:
        ms = env_i[e, E_MAX_STEPS]
        pct = 0
        if ms > 0:
            pct = min(int(np.round(255.0 * env_i[e, E_STEP] / ms)), 255)
        n = emit(out, n, T, center, EPISODE_COMPLETION_PCT, pct)
    if params[P_G_LAST_ACTION]:
        n = emit(out, n, T, center, LAST_ACTION, agent_i[a, A_LAST_ACT] & 255)
        n = emit(out, n, T, center, LAST_ACTION_ARG, agent_i[a, A_LAST_ARG] & 255)
    if params[P_G_LAST_REWARD]:
        rv = int(np.round(rewards[a] * 100.0))
        n = emit(out, n, T, center, LAST_REWARD, min(max(rv, 0), 255))
    if params[P_G_RESOURCE_RW]:
        n = emit(out, n, T, center, RESOURCE_REWARDS, agent_i[a, A_RW_BITS])
    if full:
        center_cell = goff + agent_i[a, A_R] * S + agent_i[a, A_C]
        # The occupied window cells as a mask over their distance rank (obs_rank[row * ow + col]), up to 4 x 64
        # cells: the scan below then walks them nearest first, the order upstream writes tokens in.
        m0 = np.uint64(0)
        m1 = np.uint64(0)
        m2 = np.uint64(0)
        m3 = np.uint64(0)
        row_start = center_cell - (oh // 2) * S - (ow // 2)
        for i in range(oh):
            bits = occ_row_bits(occ, row_start + i * S, ow)
            while bits:
                j = lowest_bit_index(bits)
                bits &= bits - np.uint64(1)
                k = obs_rank[i * ow + j]
                bit = np.uint64(1) << np.uint64(k & 63)
                if k < 64:
                    m0 |= bit
                elif k < 128:
                    m1 |= bit
                elif k < 192:
                    m2 |= bit
                else:
                    m3 |= bit
        for word in range(4):
            if word == 0:
                m = m0
            elif word == 1:
                m = m1
            elif word == 2:
                m = m2
            else:
                m = m3
            while m:
                k = word * 64 + lowest_bit_index(m)
                m &= m - np.uint64(1)
                pair = grid_pair[center_cell + cell_deltas[k]]  # (agent, object) as one int32, agent in the low half
                ga = pair & 0xFFFF
                go = pair >> 16
                loc = obs_offsets[k, 2]
                if ga != 0:
                    o = agent_base + ga - 1
                    n = emit(out, n, T, loc, TYPE_ID, 0)
                    n = emit(out, n, T, loc, GROUP, agent_i[o, A_GROUP_ID])
                    n = emit(out, n, T, loc, FROZEN, 1 if agent_i[o, A_FROZEN] > 0 else 0)
                    n = emit(out, n, T, loc, ORIENTATION, agent_i[o, A_ORIENT])
                    n = emit(out, n, T, loc, COLOR, agent_i[o, A_COLOR])
                    if agent_i[o, A_GLYPH] != 0:
                        n = emit(out, n, T, loc, GLYPH, agent_i[o, A_GLYPH])
                    for i in range(n_items):
                        v = agent_inv[o, i]
                        if v > 0:
                            n = emit(out, n, T, loc, INVENTORY_BASE + i, min(v, 255))
                if go < 0:
                    n = emit(out, n, T, loc, TYPE_ID, (-go) & 255)
                    if go <= -SWAPPABLE_STATIC:
                        n = emit(out, n, T, loc, SWAPPABLE, 1)
                elif go > 0:
                    ci = coff + go - 1
                    n = emit(out, n, T, loc, TYPE_ID, conv_i[ci, C_TYPE])
                    n = emit(out, n, T, loc, COLOR, conv_i[ci, C_COLOR])
                    n = emit(out, n, T, loc, CONVERTING, 1 if conv_i[ci, C_STATE] != CONV_IDLE else 0)
                    for i in range(n_items):
                        v = conv_inv[ci, i]
                        if v > 0:
                            n = emit(out, n, T, loc, INVENTORY_BASE + i, v)
                    if conv_i[ci, C_RECIPE_OBS]:
                        for side in range(2):
                            for i in range(n_items):
                                v = conv_recipe[ci, side, i]
                                if v > 0:
                                    n = emit(out, n, T, loc, INVENTORY_BASE + (side + 1) * n_items + i, v)
    else:
        n = agent_i[a, A_OBS_WANT]  # the window tokens after the globals are those of the previous step
    written = min(n, T)
    if full:
        # Slots past the previous observation's tokens are already 0xFF; clear only what it left behind.
        for k in range(written, min(max(agent_i[a, A_OBS_N], written + 1), T)):
            out[k, 0] = 255
            out[k, 1] = 255
            out[k, 2] = 255
    agent_i[a, A_OBS_N] = written
    agent_i[a, A_OBS_WANT] = n
    env_game_stats[e, G_TOKENS_WRITTEN] += written
    env_game_stats[e, G_TOKENS_DROPPED] += n - written
    env_game_stats[e, G_TOKENS_FREE] += T - written


@jit
def observe_env(
    e,
    env_i,
    env_cell_deltas,
    grid_pair,
    conv_i,
    conv_inv,
    conv_recipe,
    agent_i,
    agent_inv,
    rewards,
    obs,
    obs_offsets,
    params,
    n_items,
    env_game_stats,
    occ,
    obs_rank,
    env_marks,
):
    """Observations of env ``e``'s agents; windows without a marked cell keep their tokens (see MARK_CAP)."""
    N = params[P_N_AGENTS]
    base = e * N
    cell_deltas = env_cell_deltas[e]
    half_h = params[P_OH] // 2
    half_w = params[P_OW] // 2
    n_marks = env_i[e, E_MARK_N]
    for k in range(N):
        a = base + k
        full = n_marks < 0 or agent_i[a, A_OBS_WANT] < 0
        if not full:
            r = agent_i[a, A_R]
            c = agent_i[a, A_C]
            for m in range(n_marks):
                if abs(env_marks[e, m, 0] - r) <= half_h and abs(env_marks[e, m, 1] - c) <= half_w:
                    full = True
                    break
        write_agent_obs(
            a,
            e,
            base,
            env_i,
            grid_pair,
            conv_i,
            conv_inv,
            conv_recipe,
            agent_i,
            agent_inv,
            rewards,
            obs,
            obs_offsets,
            cell_deltas,
            params,
            n_items,
            env_game_stats,
            occ,
            obs_rank,
            full,
        )


@jit
def step_envs(
    actions,
    rewards,
    terminals,
    truncations,
    obs,
    env_i,
    env_cell_deltas,
    env_rng,
    env_game_stats,
    grid_pair,
    grid_agent,
    grid_obj,
    conv_i,
    conv_inv,
    conv_recipe,
    agent_i,
    agent_f,
    agent_inv,
    agent_limit,
    agent_rw,
    agent_stats,
    agent_stat_rw,
    action_table,
    action_resources,
    defense,
    stat_off,
    obs_offsets,
    params,
    order,
    group_pool,
    occ,
    obs_rank,
    env_marks,
):
    """Advance every env of the batch by one step (upstream's step order). Returns how many envs finished.

    Per env: clear rewards, advance the clock and due converter events; shuffle the agents; run actions by
    priority (attacks first); observe; stat rewards; episode limit; group reward sharing.
    """
    N = params[P_N_AGENTS]
    E = env_i.shape[0]
    n_actions = action_table.shape[0]
    n_items = agent_inv.shape[1]
    n_groups = stat_off[SB_FROZEN_GROUP + 1] - stat_off[SB_FROZEN_GROUP]
    track_move = params[P_TRACK_MOVE] != 0
    n_done = 0
    for e in range(E):
        base = e * N
        for k in range(N):
            rewards[base + k] = 0.0
            terminals[base + k] = False
            truncations[base + k] = False
        env_i[e, E_STEP] += 1
        env_i[e, E_MARK_N] = 0
        process_events(e, env_i, conv_i, conv_inv, conv_recipe, n_items, env_marks)

        for k in range(N):
            order[k] = k
        for k in range(N - 1, 0, -1):
            j = rng_next(env_rng, e) % np.uint64(k + 1)
            tmp = order[k]
            order[k] = order[j]
            order[j] = tmp

        for prio in (1, 0):
            for k in range(N):
                a = base + order[k]
                t = actions[a, 0]
                arg = actions[a, 1]
                valid_type = 0 <= t < n_actions
                if valid_type:
                    if action_table[t, 2] != prio:
                        continue
                elif prio != 0:
                    continue
                success = False
                if not valid_type:
                    agent_stats[a, stat_off[SB_INVALID_TYPE]] += 1
                elif arg < 0 or arg > action_table[t, 1]:
                    agent_stats[a, stat_off[SB_INVALID_ARG]] += 1
                    agent_stats[a, stat_off[SB_INVALID_ARG_TYPE] + t] += 1
                elif agent_i[a, A_FROZEN] > 0:
                    agent_i[a, A_FROZEN] -= 1
                    if agent_i[a, A_FROZEN] == 0:
                        mark_cell(env_i, env_marks, e, agent_i[a, A_R], agent_i[a, A_C])  # its frozen token goes
                    agent_stats[a, stat_off[SB_FROZEN]] += 1
                    agent_stats[a, stat_off[SB_FROZEN_GROUP] + agent_i[a, A_GROUP]] += 1
                    agent_i[a, A_LAST_ACT] = t
                    agent_i[a, A_LAST_ARG] = arg
                    agent_i[a, A_SUCCESS] = 0
                    continue
                else:
                    handler = action_table[t, 0]
                    if track_move and handler == H_ROTATE and agent_i[a, A_LAST_ACT] == t:
                        agent_stats[a, stat_off[SB_SEQ_ROT]] += 1
                    ok = True
                    for i in range(n_items):
                        if agent_inv[a, i] < action_resources[t, 0, i]:
                            ok = False
                            break
                    r0 = agent_i[a, A_R]
                    c0 = agent_i[a, A_C]
                    orient0 = agent_i[a, A_ORIENT]
                    if ok:
                        success = do_action(
                            a,
                            e,
                            handler,
                            arg,
                            base,
                            env_i,
                            grid_agent,
                            grid_obj,
                            conv_i,
                            conv_inv,
                            conv_recipe,
                            agent_i,
                            agent_inv,
                            agent_limit,
                            agent_rw,
                            agent_stats,
                            stat_off,
                            rewards,
                            defense,
                            n_items,
                            n_groups,
                            track_move,
                            occ,
                        )
                    if success and handler != H_NOOP:
                        # The cells this action can have changed (an attack reaches too far: everything).
                        if handler == H_ATTACK:
                            env_i[e, E_MARK_N] = -1
                        elif handler != H_ROTATE or agent_i[a, A_ORIENT] != orient0:
                            mark_cell(env_i, env_marks, e, r0, c0)
                            if agent_i[a, A_R] != r0 or agent_i[a, A_C] != c0:
                                mark_cell(env_i, env_marks, e, agent_i[a, A_R], agent_i[a, A_C])
                            if handler == H_PUT or handler == H_GET:
                                fr, fc = front_cell(r0, c0, orient0, env_i[e, E_H], env_i[e, E_W])
                                mark_cell(env_i, env_marks, e, fr, fc)
                    if success:
                        for i in range(n_items):
                            if action_resources[t, 1, i] > 0:
                                update_inventory(
                                    a,
                                    i,
                                    -action_resources[t, 1, i],
                                    agent_inv,
                                    agent_limit,
                                    agent_rw,
                                    agent_stats,
                                    stat_off,
                                    rewards,
                                )
                                mark_cell(env_i, env_marks, e, agent_i[a, A_R], agent_i[a, A_C])
                        agent_stats[a, stat_off[SB_ACT_SUCCESS] + t] += 1
                    else:
                        agent_stats[a, stat_off[SB_ACT_FAILED] + t] += 1
                if not success:
                    agent_stats[a, stat_off[SB_FAILURE_PENALTY]] += 1
                    rewards[a] -= agent_f[a, F_PENALTY]
                agent_i[a, A_LAST_ACT] = t
                agent_i[a, A_LAST_ARG] = arg
                agent_i[a, A_SUCCESS] = 1 if success else 0

        observe_env(
            e,
            env_i,
            env_cell_deltas,
            grid_pair,
            conv_i,
            conv_inv,
            conv_recipe,
            agent_i,
            agent_inv,
            rewards,
            obs,
            obs_offsets,
            params,
            n_items,
            env_game_stats,
            occ,
            obs_rank,
            env_marks,
        )

        if env_i[e, E_HAS_STAT_RW]:
            S = agent_stat_rw.shape[2]
            for k in range(N):
                a = base + k
                total = 0.0
                for s in range(S):
                    per_unit = agent_stat_rw[a, 0, s]
                    if per_unit != 0.0:
                        total += min(agent_stats[a, s] * per_unit, agent_stat_rw[a, 1, s])
                rewards[a] += total - agent_f[a, F_STAT_RW]
                agent_f[a, F_STAT_RW] = total

        if env_i[e, E_SHARE]:
            for g in range(n_groups):
                group_pool[g, 0] = 0.0
                group_pool[g, 1] = 0.0
            for k in range(N):
                a = base + k
                g = agent_i[a, A_GROUP]
                share = rewards[a] * agent_f[a, F_GROUP_PCT]
                rewards[a] -= share
                group_pool[g, 0] += share
                group_pool[g, 1] += 1.0
            for k in range(N):
                a = base + k
                g = agent_i[a, A_GROUP]
                rewards[a] += group_pool[g, 0] / group_pool[g, 1]

        for k in range(N):
            agent_f[base + k, F_EP_REWARD] += rewards[base + k]

        ms = env_i[e, E_MAX_STEPS]
        if ms > 0 and env_i[e, E_STEP] >= ms:
            env_i[e, E_DONE] = 1
            n_done += 1
            if env_i[e, E_TRUNCATES]:
                for k in range(N):
                    truncations[base + k] = True
            else:
                for k in range(N):
                    terminals[base + k] = True
    return n_done


@jit
def count_cell_codes(grid, counts):
    """``counts[code]`` = cells of ``grid`` (uint8 codes, any shape) holding that code; ``counts`` is zeroed first.
    ``np.bincount`` widens the codes to int64 first, which costs more than the counting on a 40k-cell map."""
    for i in range(counts.shape[0]):
        counts[i] = 0
    flat = grid.ravel()
    for i in range(flat.shape[0]):
        counts[flat[i]] += 1


LOAD_CONVERTERS_FULL = -1000  # load_episode: the map has more converters than the env's converter slot


@jit
def load_episode(
    e,
    level,
    lookup,
    conv_template_int,
    conv_template_recipe,
    agent_template_int,
    agent_template_float,
    agent_template_limits,
    agent_template_rewards,
    agent_template_stat_rw,
    env_i,
    env_cell_deltas,
    obs_offsets,
    env_game_stats,
    grid_pair,
    conv_i,
    conv_inv,
    conv_recipe,
    agent_i,
    agent_f,
    agent_inv,
    agent_limit,
    agent_rw,
    agent_stats,
    agent_stat_rw,
    N,
    occ,
    counts,
    conv_cap,
):
    """Write a freshly built map into env ``e``'s slot and reset its converters and agents.

    ``lookup[code] = (kind, index)`` says what each map cell code is in this game. Agents are numbered in
    row-major map order. ``counts[code]`` receives the cells of each code. Returns 0 on success, or
    -(code + 1) of the first cell code the game does not know, or LOAD_CONVERTERS_FULL when the map has more
    than ``conv_cap`` converters, or the number of agent cells found if it differs from N (as N + 1 + found,
    to tell it apart from 0). After an error the slot holds part of the map and must be loaded again.
    """
    H = level.shape[0]
    W = level.shape[1]
    S = W + 2 * GRID_PAD
    slot = env_i[e, E_SLOT_OFF]
    slot_end = slot + (H + 2 * GRID_PAD) * S
    for cell in range(slot, slot_end):
        grid_pair[cell] = 0
    occ_clear_range(occ, slot, slot_end)
    for i in range(counts.shape[0]):
        counts[i] = 0
    goff = slot + GRID_PAD * S + GRID_PAD
    coff = env_i[e, E_CONV_OFF]
    base = e * N
    n_conv = 0
    n_agents = 0
    for r in range(H):
        # Counted by runs (maps are long runs of wall and of floor): one store per run, not per cell.
        run_code = level[r, 0]
        run = 0
        # The row's occupancy bits are gathered in a word and stored once per 64 cells.
        row0 = goff + r * S
        word_index = row0 >> 6
        word = np.uint64(0)
        for c in range(W):
            code = level[r, c]
            if code == run_code:
                run += 1
            else:
                counts[run_code] += run
                run_code = code
                run = 1
            kind = lookup[code, 0]
            if kind == 0:
                continue
            cell = row0 + c
            if (cell >> 6) != word_index:
                occ[word_index] |= word
                word_index = cell >> 6
                word = np.uint64(0)
            word |= np.uint64(1) << np.uint64(cell & 63)
            idx = lookup[code, 1]
            if kind == 1:
                grid_pair[cell] = np.int32(-idx) << 16  # (agent 0, object -idx) as one int32
            elif kind == 2:
                if n_conv >= conv_cap:
                    return LOAD_CONVERTERS_FULL
                ci = coff + n_conv
                n_conv += 1
                grid_pair[cell] = np.int32(n_conv) << 16
                conv_i[ci, C_TYPE] = conv_template_int[idx, 0]
                conv_i[ci, C_R] = r
                conv_i[ci, C_C] = c
                conv_i[ci, C_COLOR] = conv_template_int[idx, 5]
                conv_i[ci, C_MAXOUT] = conv_template_int[idx, 1]
                conv_i[ci, C_TICKS] = conv_template_int[idx, 2]
                conv_i[ci, C_COOLDOWN] = conv_template_int[idx, 3]
                conv_i[ci, C_STATE] = CONV_IDLE
                conv_i[ci, C_END] = 0
                conv_i[ci, C_RECIPE_OBS] = conv_template_int[idx, 6]
                init = conv_template_int[idx, 4]
                for i in range(conv_inv.shape[1]):
                    conv_recipe[ci, 0, i] = conv_template_recipe[idx, 0, i]
                    conv_recipe[ci, 1, i] = conv_template_recipe[idx, 1, i]
                    conv_inv[ci, i] = init if conv_template_recipe[idx, 1, i] > 0 else 0
            elif kind == 3:
                if n_agents < N:
                    a = base + n_agents
                    grid_pair[cell] = n_agents + 1
                    agent_i[a, A_R] = r
                    agent_i[a, A_C] = c
                    agent_i[a, A_ORIENT] = 0
                    agent_i[a, A_FROZEN] = 0
                    agent_i[a, A_FREEZE_DUR] = agent_template_int[idx, 2]
                    agent_i[a, A_COLOR] = 0
                    agent_i[a, A_GLYPH] = 0
                    agent_i[a, A_GROUP] = agent_template_int[idx, 0]
                    agent_i[a, A_GROUP_ID] = agent_template_int[idx, 1]
                    agent_i[a, A_RW_BITS] = agent_template_int[idx, 3]
                    agent_i[a, A_LAST_ACT] = 0
                    agent_i[a, A_LAST_ARG] = 0
                    agent_i[a, A_SUCCESS] = 0
                    agent_f[a, F_PENALTY] = agent_template_float[idx, 0]
                    agent_f[a, F_GROUP_PCT] = agent_template_float[idx, 1]
                    agent_f[a, F_EP_REWARD] = 0.0
                    agent_f[a, F_STAT_RW] = 0.0
                    for i in range(agent_inv.shape[1]):
                        agent_inv[a, i] = 0
                        agent_limit[a, i] = agent_template_limits[idx, i]
                        agent_rw[a, 0, i] = agent_template_rewards[idx, 0, i]
                        agent_rw[a, 1, i] = agent_template_rewards[idx, 1, i]
                    for s in range(agent_stats.shape[1]):
                        agent_stats[a, s] = 0.0
                    for s in range(agent_template_stat_rw.shape[2]):
                        agent_stat_rw[a, 0, s] = agent_template_stat_rw[idx, 0, s]
                        agent_stat_rw[a, 1, s] = agent_template_stat_rw[idx, 1, s]
                n_agents += 1
            else:
                return -(np.int64(code) + 1)
        occ[word_index] |= word
        counts[run_code] += run
    if n_agents != N:
        return N + 1 + n_agents
    env_i[e, E_H] = H
    env_i[e, E_W] = W
    env_i[e, E_STRIDE] = S
    env_i[e, E_GRID_OFF] = goff
    for k in range(obs_offsets.shape[0]):
        env_cell_deltas[e, k] = obs_offsets[k, 0] * S + obs_offsets[k, 1]
    env_i[e, E_CONV_N] = n_conv
    env_i[e, E_STEP] = 0
    env_i[e, E_MARK_N] = -1  # a new map: every window is new
    env_i[e, E_DONE] = 0
    env_i[e, E_NEXT_EVENT] = np.int64(1) << 62
    for g in range(env_game_stats.shape[1]):
        env_game_stats[e, g] = 0.0
    for k in range(n_conv):
        maybe_start_converting(coff + k, 0, env_i, e, conv_i, conv_inv, conv_recipe, conv_inv.shape[1])
    return 0
