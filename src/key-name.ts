// The key-name rule, defined once: the config files, the key store and every
// API dialect check names against it. A leaf module (like errors.ts) so that
// config/, which may use no other layer, can use it too.

/** 1-128 letters, digits, ".", "_" or "-", starting with a letter or digit. */
export const KEY_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
