//! The stack's high-water mark: cortex-m-rt paints the whole stack at boot
//! (`paint-stack`); the deepest word that no longer holds the paint shows how much
//! stack has ever been used.

unsafe extern "C" {
    /// Top of the stack (cortex-m-rt's linker script).
    static _stack_start: u32;
    /// Lowest address the stack may reach (cortex-m-rt's linker script).
    static _stack_end: u32;
}

/// Bytes of stack used at the deepest point since boot.
pub fn high_water_bytes() -> u32 {
    let top = (&raw const _stack_start) as usize;
    let bottom = (&raw const _stack_end) as usize;
    let mut address = bottom;
    while address < top {
        // SAFETY: `address` is 4-byte aligned (the linker script asserts it for
        // `_stack_end`) and inside the stack region of RAM between `_stack_end` and
        // `_stack_start`, which is always mapped; the read is volatile because the
        // words below the stack pointer belong to nobody the compiler knows of.
        let word = unsafe { core::ptr::read_volatile(address as *const u32) };
        if word != cortex_m_rt::STACK_PAINT_VALUE {
            break;
        }
        address += 4;
    }
    (top - address) as u32
}
