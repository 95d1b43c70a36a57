"""Ridge regression on the prepared data: the agent edits this file."""

from minisk import Ridge, StandardScaler
from prepare import load_data, rmse

X_train, X_val, y_train, y_val = load_data()
scaler = StandardScaler().fit(X_train)
model = Ridge(alpha=0.1, fit_intercept=True)
model.fit(scaler.transform(X_train), y_train)
print(f"val_rmse: {rmse(y_val, model.predict(scaler.transform(X_val))):.6f}")
