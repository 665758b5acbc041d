"""Constants shared by the security tests (imported by name, like tests/chat's chat_helpers)."""

CHAT_ADMIN = "chat-admin-token-0123456789"
PLATFORM_TOKEN = "platform-token-0123456789"
