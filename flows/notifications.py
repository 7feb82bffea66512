"""Notification block for email over SMTP, which Prefect's core blocks lack (they have Sendgrid, not SMTP).

Automation actions run inside Prefect's server process, so the class must be importable there: the package
registers this module under the `prefect.collections` entry point (pyproject.toml), and Prefect imports those
before it looks up a block class. Delivery is Apprise's (a Prefect dependency), so STARTTLS, SSL, auth and
MIME are not hand-written here. Keep this module light: every Prefect process may import it.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote, urlencode

from prefect.blocks.notifications import AbstractAppriseNotificationBlock
from pydantic import Field, SecretStr


class SMTPEmail(AbstractAppriseNotificationBlock):
    """Send a notification as an email through any SMTP server."""

    _block_type_name = "SMTP Email"
    _block_type_slug = "llm-pipeline-smtp-email"
    _description = "Email over SMTP (STARTTLS, SSL or plain), through Apprise."

    host: str = Field(description="SMTP server host name.")
    port: int = Field(default=587, description="SMTP port: 587 (STARTTLS), 465 (SSL), 25 (plain).")
    security: Literal["starttls", "ssl", "none"] = Field(default="starttls")
    username: str | None = Field(default=None)
    password: SecretStr | None = Field(default=None)
    from_address: str = Field(description="The sender, e.g. pipeline@example.com.")
    to: list[str] = Field(description="Recipients.")

    def block_initialization(self) -> None:
        self._start_apprise_client(SecretStr(self.apprise_url()))

    def apprise_url(self) -> str:
        scheme = "mailto" if self.security == "none" else "mailtos"
        auth = ""
        if self.username:
            password = self.password.get_secret_value() if self.password else ""
            auth = f"{quote(self.username, safe='')}:{quote(password, safe='')}@"
        mode = {"none": "insecure", "starttls": "starttls", "ssl": "ssl"}[self.security]
        query = urlencode(
            {"smtp": self.host, "from": self.from_address, "to": ",".join(self.to), "mode": mode, "format": "text"}
        )
        return f"{scheme}://{auth}{self.host}:{self.port}?{query}"
